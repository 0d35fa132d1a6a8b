"""How fast is `git push` through `disco serve`, compared with native git, and how much memory does it use?

For each repo size (default 10 MB and 100 MB) the script generates a repo with one commit on
`main`: a few hundred to a few thousand source-like text files of 1-20 KB (fixed seed, so
runs are comparable) plus a few large incompressible binary files that make up most of the
size. It then times `git push` of that repo to a fresh destination, N times each, through:

  disco    `disco serve` on a free loopback port (its own temp data dir and key)
  file://  native git to a fresh bare repo on the local file system
  sshd     native git over OpenSSH, via an sshd this script starts on a free loopback port
           (needs root; when /usr/sbin/sshd is missing the script installs Debian's
           openssh-server with apt-get first, and says so)

Every variant pushes `main` to a branch named `bench`, not to `main`: a push to Disco's deploy
branch builds and rolls out the app, and this measures the git transport only. With Docker
running, the daemon also starts its Caddy proxy; it gets an instance name and ports of its own,
and the script removes its Docker objects at the end.

The variants are interleaved within each repetition (and their order rotated) so machine
noise hits them alike; the table shows the median. It also samples the daemon's RSS during
the pushes (peak), once right after start (idle) and once right after each size's pushes
(after), and labels each number against its target (disco/native ratio <= 1.2, idle RSS
< 60 MB) with PASS or MISS. The figures it prints are also written to bench/results/push.json.
The exit status is 0 unless something broke. Everything it starts is stopped and its temp dir
removed, also on Ctrl-C (unless --keep).

Run by hand, from the repo root (never from the tests; it takes a few minutes):

    .venv/bin/python bench/push.py [--sizes 10,100] [--repeat 3] [--keep]

Sizes and memory are in decimal megabytes (1 MB = 1,000,000 bytes).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from disco_harness import CADDY_IMAGE, DISCO, GIT_ENV, free_port, run, write_results
from runtime.docker_engine import DockerError, Engine  # disco_harness put the repo root on sys.path

SSHD = Path("/usr/sbin/sshd")
# sshd refuses to start without its privilege separation directory; Debian's init script makes it.
SSHD_PRIVSEP_DIR = Path("/run/sshd")

MB = 1_000_000
SEED = 20240601
SOURCE_SHARE = 0.3  # of each repo's size; the rest is incompressible binary
BINARY_FILES = 4
SOURCE_FILE_SIZES = (1_000, 20_000)

RATIO_TARGET = 1.2
IDLE_RSS_TARGET_MB = 60.0
IDLE_SETTLE_SECONDS = 2.0
RSS_SAMPLE_SECONDS = 0.02
PUSH_TIMEOUT_SECONDS = 1800
# Not the deploy branch (main), so Disco stores the push without building or deploying it.
TARGET_REF = "refs/heads/bench"
LISTEN_TIMEOUT_SECONDS = 20


# -- small helpers -----------------------------------------------------------------------------


def megabytes(size_bytes: float) -> str:
    return f"{size_bytes / MB:.1f} MB"


def proc_status_kb(pid: int, name: str) -> int | None:
    """A `kB` line of /proc/<pid>/status (VmRSS, VmHWM), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def kb_to_mb(kilobytes: int) -> float:
    return kilobytes * 1024 / MB


def pass_or_miss(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# -- generated repos ---------------------------------------------------------------------------

WORDS = (
    "user account request response handler config value result error message buffer stream "
    "index cache token session record entry item node tree path name status count offset limit "
    "parse render load store fetch update delete create build check apply merge split format "
    "encode decode validate resolve commit push deploy project branch image container service "
    "network volume secret domain route health timeout retry backoff queue worker event log"
).split()
EXTENSIONS = (".py", ".js", ".go", ".ts", ".rb", ".md", ".toml")


def identifier(rng: random.Random) -> str:
    return "_".join(rng.choices(WORDS, k=rng.randint(1, 3)))


def source_line(rng: random.Random) -> str:
    """One line that looks like code: mostly repetitive vocabulary, some unique literals."""
    kind = rng.randrange(8)
    if kind == 0:
        return f"def {identifier(rng)}({identifier(rng)}, {identifier(rng)}={rng.randint(0, 999)}):"
    if kind == 1:
        return f"class {rng.choice(WORDS).title()}{rng.choice(WORDS).title()}({rng.choice(WORDS).title()}):"
    if kind == 2:
        return f"    # {' '.join(rng.choices(WORDS, k=rng.randint(4, 12)))}."
    if kind == 3:
        return f"    if {identifier(rng)} > {rng.randint(0, 10_000)}:\n        return {identifier(rng)}[{rng.randint(0, 99)}]"
    if kind == 4:
        # Hashes, ids and the like: the part of real code that does not compress.
        return f'    {identifier(rng)} = "{rng.getrandbits(rng.choice((64, 128, 160))):x}"'
    if kind == 5:
        return ""
    return f"    {identifier(rng)} = {identifier(rng)}.{identifier(rng)}({identifier(rng)}, {rng.randint(0, 99)})"


def source_text(rng: random.Random, size: int) -> str:
    lines: list[str] = []
    length = 0
    while length < size:
        line = source_line(rng)
        lines.append(line)
        length += len(line) + 1
    return "\n".join(lines)[:size] + "\n"


@dataclass
class GeneratedRepo:
    path: Path
    size_mb: int
    source_files: int
    source_bytes: int
    binary_bytes: int
    pack_bytes: int
    head: str

    def describe(self) -> str:
        return (
            f"{self.size_mb} MB repo: {self.source_files} source files ({megabytes(self.source_bytes)}) + "
            f"{BINARY_FILES} binary files ({megabytes(self.binary_bytes)}); packed {megabytes(self.pack_bytes)}"
        )


def write_source_files(root: Path, budget: int, rng: random.Random) -> tuple[int, int]:
    """Source-like files until `budget` bytes are used; returns (file count, bytes)."""
    count = written = 0
    while written < budget:
        size = min(rng.randint(*SOURCE_FILE_SIZES), max(budget - written, SOURCE_FILE_SIZES[0]))
        path = root / "src" / f"pkg{count // 50:03d}" / f"{rng.choice(WORDS)}_{count:05d}{rng.choice(EXTENSIONS)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source_text(rng, size))
        count += 1
        written += size
    return count, written


def write_binary_files(root: Path, budget: int) -> int:
    """A few incompressible files (os.urandom: no seed needed, random is random)."""
    each = budget // BINARY_FILES
    (root / "assets").mkdir(parents=True, exist_ok=True)
    for number in range(BINARY_FILES):
        with open(root / "assets" / f"blob-{number}.bin", "wb") as blob:
            for start in range(0, each, 1 << 20):
                blob.write(os.urandom(min(1 << 20, each - start)))
    return each * BINARY_FILES


def generate_repo(path: Path, size_mb: int) -> GeneratedRepo:
    total = size_mb * MB
    rng = random.Random(SEED * 1000 + size_mb)
    source_files, source_bytes = write_source_files(path, int(total * SOURCE_SHARE), rng)
    binary_bytes = write_binary_files(path, total - source_bytes)
    run(["git", "init", "-q", "-b", "main", str(path)])
    run(["git", "add", "-A"], cwd=path)
    run(["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.com", "commit", "-q", "-m", "bench"], cwd=path)
    # Packed like a developer's repo after `git gc`: the client then mostly streams existing
    # pack data, so the timings show the transport and the server rather than client zlib.
    run(["git", "repack", "-adq"], cwd=path)
    pack_bytes = sum(p.stat().st_size for p in (path / ".git" / "objects" / "pack").glob("*.pack"))
    head = run(["git", "rev-parse", "HEAD"], cwd=path).stdout.strip()
    return GeneratedRepo(path, size_mb, source_files, source_bytes, binary_bytes, pack_bytes, head)


# -- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def start_server(name: str, cmd: list[str], port: int, log_path: Path) -> Server:
    """Start a daemon in its own session (a Ctrl-C in the terminal reaches us, not it, so we
    stop it in order) and wait until it accepts connections."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    server = Server(name, process, port, log_path)
    try:
        wait_until_listening(server)
    except BaseException:  # Ctrl-C included: the caller has no handle on it yet
        stop_server(server)
        raise
    return server


def wait_until_listening(server: Server) -> None:
    deadline = time.monotonic() + LISTEN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{server.name} did not listen on port {server.port}:\n{server.log_tail()}")


def stop_server(server: Server) -> None:
    """SIGTERM to the process group we created for it (sshd's per-connection children too)."""
    if server.process.poll() is None:
        try:
            os.killpg(server.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@dataclass
class Workspace:
    root: Path
    client_key: Path
    known_hosts: Path

    def ssh_command(self) -> str:
        """What git runs to reach either SSH server: our key only, no user ssh config."""
        return shlex.join([
            "ssh", "-F", os.devnull, "-i", str(self.client_key), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR",
        ])


def make_workspace(root: Path) -> Workspace:
    key = root / "client_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench@disco", "-f", str(key)])
    return Workspace(root, key, root / "known_hosts")


def start_disco(workspace: Workspace, instance: str) -> tuple[Server, Path]:
    """A fresh data dir with one admin (our key), and the daemon on it; returns (server, repos dir).

    The daemon also starts a Caddy proxy in Docker: like the tests, give it an instance name of
    its own (the prefix of every Docker object it makes) and free ports, never the defaults
    (`disco`, 80 and 443), which belong to a real install.
    """
    data_dir = workspace.root / "disco-data"
    run([str(DISCO), "init", "--data-dir", str(data_dir), "--admin", "bench", "--key", f"{workspace.client_key}.pub"])
    port = free_port()
    cmd = [
        str(DISCO), "serve", "--data-dir", str(data_dir), "--ssh-port", str(port), "--listen", "127.0.0.1",
        "--instance", instance, "--http-port", str(free_port()), "--https-port", str(free_port()),
        "--no-tls", "--apps-domain", "localhost", "--caddy-image", CADDY_IMAGE,
    ]
    return start_server("disco serve", cmd, port, workspace.root / "disco-serve.log"), data_dir / "repos"


def remove_docker_objects(instance: str) -> None:
    """Remove the services, networks and volumes the daemon made, as the tests do."""
    try:
        Engine(instance).remove_instance()
    except DockerError:
        pass  # no Docker engine running, so the daemon made nothing there either


def sshd_unavailable_reason() -> str | None:
    """Why the sshd variant cannot run, or None; installs the server first when it is missing."""
    if os.geteuid() != 0:
        return "sshd has to run as root (it pushes as root@127.0.0.1)"
    if not SSHD.exists():
        install_sshd()
    if not SSHD.exists():
        return f"{SSHD} not found after installing openssh-server"
    return None


def install_sshd() -> None:
    """Install Debian's OpenSSH server, for the sshd baseline only (test-only: the daemon never
    needs it). Where the system lets packages start services, the package starts its own sshd
    on port 22 too; this script uses only the one it starts itself."""
    print(f"{SSHD} is missing: installing openssh-server with apt-get (for the sshd baseline only)", flush=True)
    # Another apt-get may hold the dpkg lock for a while (other benchmarks, set-up scripts).
    run(["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "openssh-server"],
        timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_sshd_privsep_dir(stack: ExitStack) -> None:
    """Make /run/sshd if missing, and remove it again at the end if we made it."""
    if SSHD_PRIVSEP_DIR.exists():
        return
    SSHD_PRIVSEP_DIR.mkdir(mode=0o755)
    stack.callback(lambda: SSHD_PRIVSEP_DIR.rmdir() if SSHD_PRIVSEP_DIR.exists() else None)


def start_sshd(workspace: Workspace) -> Server:
    home = workspace.root / "sshd"
    home.mkdir()
    host_key = home / "ssh_host_ed25519_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
    authorized_keys = home / "authorized_keys"
    shutil.copy(f"{workspace.client_key}.pub", authorized_keys)
    port = free_port()
    config = home / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PidFile none",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "StrictModes no",  # the temp dir's permissions are not what sshd insists on for ~/.ssh
        "UsePAM no",
        "UseDNS no",
        "PrintMotd no",
        "LogLevel ERROR",
        "",
    ]))
    return start_server("sshd", [str(SSHD), "-D", "-e", "-f", str(config)], port, home / "sshd.log")


# -- measuring ---------------------------------------------------------------------------------


class RssSampler:
    """Samples a process's VmRSS in a thread and keeps the peak since the last reset."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._peak_kb = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join()

    def take_peak_mb(self) -> float:
        """The peak since the previous call, in MB; starts a new window."""
        with self._lock:
            peak, self._peak_kb = self._peak_kb, 0
        return kb_to_mb(peak)

    def _sample(self) -> None:
        while not self._stopped.wait(RSS_SAMPLE_SECONDS):
            rss = proc_status_kb(self.pid, "VmRSS")
            if rss is None:
                return
            with self._lock:
                self._peak_kb = max(self._peak_kb, rss)


@dataclass
class PushTarget:
    url: str
    git_dir: Path  # where the pushed ref can be checked afterwards


@dataclass
class Variant:
    name: str
    # Makes a fresh, empty destination named `label` (untimed) and says where to push.
    prepare: Callable[[str], PushTarget]


def bare_repo_variant(name: str, root: Path, url_for: Callable[[Path], str]) -> Variant:
    def prepare(label: str) -> PushTarget:
        git_dir = root / f"{label}.git"
        run(["git", "init", "-q", "--bare", "-b", "main", str(git_dir)])
        return PushTarget(url_for(git_dir), git_dir)

    root.mkdir(parents=True, exist_ok=True)
    return Variant(name, prepare)


def disco_variant(server: Server, repos_dir: Path) -> Variant:
    # An admin's first push to a new name creates the project; that is part of what we time.
    def prepare(label: str) -> PushTarget:
        return PushTarget(f"ssh://git@127.0.0.1:{server.port}/{label}", repos_dir / f"{label}.git")

    return Variant("disco", prepare)


def timed_push(repo: GeneratedRepo, target: PushTarget, workspace: Workspace) -> float:
    env = {**GIT_ENV, "GIT_SSH_COMMAND": workspace.ssh_command()}
    started = time.perf_counter()
    run(["git", "push", "-q", target.url, f"main:{TARGET_REF}"], cwd=repo.path, env=env, timeout=PUSH_TIMEOUT_SECONDS)
    elapsed = time.perf_counter() - started
    # A push that "succeeds" without landing the commit would make a meaningless number.
    landed = run(["git", "--git-dir", str(target.git_dir), "rev-parse", TARGET_REF]).stdout.strip()
    if landed != repo.head:
        raise RuntimeError(f"push to {target.url} left {TARGET_REF} at {landed}, expected {repo.head}")
    return elapsed


@dataclass
class SizeResult:
    repo: GeneratedRepo
    seconds: dict[str, list[float]] = field(default_factory=dict)
    disco_peak_rss_mb: float = 0.0
    disco_rss_after_mb: float = 0.0  # VmRSS right after this size's last push

    def median(self, variant: str) -> float | None:
        runs = self.seconds.get(variant)
        return statistics.median(runs) if runs else None

    def ratio(self, baseline: str) -> float | None:
        disco, native = self.median("disco"), self.median(baseline)
        return disco / native if disco is not None and native is not None else None


def measure_size(repo: GeneratedRepo, variants: list[Variant], repeat: int, workspace: Workspace,
                 sampler: RssSampler) -> SizeResult:
    result = SizeResult(repo, {variant.name: [] for variant in variants})
    sampler.take_peak_mb()  # the window starts with this size's pushes
    for repetition in range(repeat):
        # Rotate the order too, so no variant always runs first (cold caches) or last.
        shift = repetition % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            target = variant.prepare(f"bench-{repo.size_mb}mb-r{repetition + 1}")
            seconds = timed_push(repo, target, workspace)
            result.seconds[variant.name].append(seconds)
            print(f"  {repo.size_mb} MB  run {repetition + 1}/{repeat}  {variant.name:<8} {seconds:7.2f} s", flush=True)
    result.disco_peak_rss_mb = sampler.take_peak_mb()
    result.disco_rss_after_mb = kb_to_mb(proc_status_kb(sampler.pid, "VmRSS") or 0)
    return result


# -- report ------------------------------------------------------------------------------------


def ratio_cell(disco: float | None, native: float | None) -> str:
    if disco is None or native is None:
        return "-"
    ratio = disco / native
    return f"{ratio:.2f} {pass_or_miss(ratio <= RATIO_TARGET)}"


def print_report(results: list[SizeResult], idle_rss_mb: float, final_rss: dict[str, float],
                 sshd_note: str | None, repeat: int) -> None:
    print()
    print(f"Results (median of {repeat}; targets: disco/native <= {RATIO_TARGET}, "
          f"daemon idle RSS < {IDLE_RSS_TARGET_MB:.0f} MB)")
    header = (f"{'size':>7}  {'variant':<8} {'median s':>9}  {'runs s':<24} {'disco/file://':>14} {'disco/sshd':>12} "
              f"{'server peak RSS':>16} {'RSS after':>10}")
    print(header)
    print("-" * len(header))
    for result in results:
        disco = result.median("disco")
        for variant, runs in result.seconds.items():
            is_disco = variant == "disco"
            row = (
                f"{result.repo.size_mb:>4} MB  {variant:<8} {statistics.median(runs):>9.2f}  "
                f"{' '.join(f'{s:.2f}' for s in runs):<24} "
                f"{ratio_cell(disco, result.median('file://')) if is_disco else '':>14} "
                f"{ratio_cell(disco, result.median('sshd')) if is_disco else '':>12} "
                f"{f'{result.disco_peak_rss_mb:.1f} MB' if is_disco else '':>16} "
                f"{f'{result.disco_rss_after_mb:.1f} MB' if is_disco else '':>10}"
            )
            print(row.rstrip())
    print()
    print(f"daemon idle RSS ({IDLE_SETTLE_SECONDS:.0f} s after listening, before any push): "
          f"{idle_rss_mb:.1f} MB  (target < {IDLE_RSS_TARGET_MB:.0f} MB) {pass_or_miss(idle_rss_mb < IDLE_RSS_TARGET_MB)}")
    for result in results:
        print(f"daemon RSS right after the {result.repo.size_mb} MB pushes: {result.disco_rss_after_mb:.1f} MB "
              f"(idle + {result.disco_rss_after_mb - idle_rss_mb:.1f} MB)")
    if final_rss:
        print(f"daemon after all pushes: VmRSS {final_rss['VmRSS']:.1f} MB, VmHWM {final_rss['VmHWM']:.1f} MB")
    print("(RSS is VmRSS, sampled every 20 ms; it counts the pages of the pack file the daemon maps "
          "while indexing it)")
    if sshd_note:
        print(f"note: sshd variant skipped: {sshd_note}")


def describe_environment() -> str:
    git = run(["git", "--version"]).stdout.strip()
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return f"{git}; {ssh}; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs"


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100", help="repo sizes in MB, comma-separated (default 10,100)")
    parser.add_argument("--repeat", type=int, default=3, help="pushes per size and variant; the median counts (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (repos, data dir, logs) for inspection")
    args = parser.parse_args(argv)
    args.sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    if not args.sizes or min(args.sizes) < 1 or args.repeat < 1:
        parser.error("sizes and --repeat must be positive")
    return args


def benchmark(args: argparse.Namespace, stack: ExitStack) -> None:
    root = Path(tempfile.mkdtemp(prefix="disco-bench-"))
    if args.keep:
        stack.callback(lambda: print(f"kept {root}"))
    else:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
    print(describe_environment())
    print(f"workspace {root}")
    workspace = make_workspace(root)

    instance = f"bench{secrets.token_hex(4)}"
    stack.callback(remove_docker_objects, instance)  # runs after the daemon has stopped
    disco, repos_dir = start_disco(workspace, instance)
    stack.callback(stop_server, disco)
    time.sleep(IDLE_SETTLE_SECONDS)
    idle_rss_kb = proc_status_kb(disco.process.pid, "VmRSS") or 0
    print(f"disco serve pid {disco.process.pid} on port {disco.port} (instance {instance}); idle RSS {kb_to_mb(idle_rss_kb):.1f} MB")

    variants = [
        disco_variant(disco, repos_dir),
        bare_repo_variant("file://", root / "file-targets", lambda git_dir: f"file://{git_dir}"),
    ]
    sshd_note = sshd_unavailable_reason()
    if sshd_note is None:
        ensure_sshd_privsep_dir(stack)
        sshd = start_sshd(workspace)
        stack.callback(stop_server, sshd)
        print(f"sshd pid {sshd.process.pid} on port {sshd.port}")
        variants.append(bare_repo_variant(
            "sshd", root / "sshd-targets", lambda git_dir: f"ssh://root@127.0.0.1:{sshd.port}{git_dir}"))
    else:
        print(f"note: skipping the sshd variant: {sshd_note}")

    results: list[SizeResult] = []
    with RssSampler(disco.process.pid) as sampler:
        for size_mb in args.sizes:
            started = time.perf_counter()
            repo = generate_repo(root / f"repo-{size_mb}mb", size_mb)
            print(f"{repo.describe()} (generated in {time.perf_counter() - started:.1f} s)", flush=True)
            results.append(measure_size(repo, variants, args.repeat, workspace, sampler))
            if disco.process.poll() is not None:
                raise RuntimeError(f"disco serve died:\n{disco.log_tail()}")

    final_rss = {name: kb_to_mb(proc_status_kb(disco.process.pid, name) or 0) for name in ("VmRSS", "VmHWM")}
    print_report(results, kb_to_mb(idle_rss_kb), final_rss, sshd_note, args.repeat)
    write_results("push", figures(results, kb_to_mb(idle_rss_kb), final_rss, sshd_note, args.repeat))


def figures(results: list[SizeResult], idle_rss_mb: float, final_rss: dict[str, float],
            sshd_note: str | None, repeat: int) -> dict[str, object]:
    """What print_report printed, as numbers (None where a variant did not run)."""
    def rounded(value: float | None, places: int = 3) -> float | None:
        return None if value is None else round(value, places)

    return {
        "repeat": repeat,
        "idle_rss_mb": round(idle_rss_mb, 1),
        "final_vmrss_mb": round(final_rss["VmRSS"], 1),
        "final_vmhwm_mb": round(final_rss["VmHWM"], 1),
        "sshd_skipped": sshd_note,
        "sizes": {
            f"{result.repo.size_mb}mb": {
                "pack_mb": round(result.repo.pack_bytes / MB, 1),
                "median_seconds": {variant: rounded(result.median(variant)) for variant in result.seconds},
                "runs_seconds": {variant: [round(s, 3) for s in runs] for variant, runs in result.seconds.items()},
                "disco_over_file": rounded(result.ratio("file://")),
                "disco_over_sshd": rounded(result.ratio("sshd")),
                "peak_rss_mb": round(result.disco_peak_rss_mb, 1),
                "rss_after_mb": round(result.disco_rss_after_mb, 1),
                "rss_after_minus_idle_mb": round(result.disco_rss_after_mb - idle_rss_mb, 1),
            }
            for result in results
        },
    }


def raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM and SIGHUP unwind like Ctrl-C, so the cleanup below runs for them too.
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGHUP, raise_interrupt)
    stack = ExitStack()
    try:
        benchmark(args, stack)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        # A second Ctrl-C must not leave daemons or temp dirs behind.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        stack.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
