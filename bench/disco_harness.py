"""Shared by the bench/ scripts: a throwaway Disco daemon, a busybox
httpd app repo, timed pushes, percentiles, and cleanup that also runs on Ctrl-C.

Not a benchmark itself. Everything here starts objects of its own only: a temp dir, a daemon
on free loopback ports with an instance name of its own (the prefix of its Docker objects),
and it removes them again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/x.py`: the project's packages live in ROOT
    sys.path.insert(0, str(ROOT))

from runtime.docker_engine import Engine  # noqa: E402  (needs ROOT on sys.path)

DISCO = ROOT / ".venv" / "bin" / "disco"
# Debian's CLI: it builds with BuildKit; /usr/local/bin/docker (client only) cannot.
DOCKER = "/usr/bin/docker"
BUSYBOX = Path("/bin/busybox")
CADDY_IMAGE = os.environ.get("DISCO_CADDY_IMAGE", "disco-caddy:debian")
PROJECT = "myapp"
APP_HOST = f"{PROJECT}.localhost"  # the daemon runs with --apps-domain localhost
LISTEN_TIMEOUT_SECONDS = 20
PUSH_TIMEOUT_SECONDS = 300
DAEMON_STOP_SECONDS = 15
PROXY_TIMEOUT_SECONDS = 60

# The tests' app: FROM scratch plus Debian's static busybox, serving /www on port 8000.
APP_DOCKERFILE = "\n".join([
    "FROM scratch",
    "COPY busybox /bin/busybox",
    "COPY busybox /bin/sh",  # busybox answers as sh when called so: a shell for CMD-SHELL checks
    "COPY www /www",
    "EXPOSE 8000",
    'CMD ["/bin/busybox", "httpd", "-f", "-p", "8000", "-h", "/www"]',
]) + "\n"
HEALTHY_TOML = "[services.web]\nport = 8000\n"
# A version whose health check never passes: Disco must refuse it and keep the old one serving.
NEVER_HEALTHY_TOML = '[services.web]\nport = 8000\nhealth = "/missing"\nhealth_timeout = 3\n'

# Keep the user's and the system's git config out of every git we run, so runs are comparable.
GIT_ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}


# -- small helpers -----------------------------------------------------------------------------


def run(cmd: list[str], timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess:
    """Run a command, failing loudly with its output if it fails."""
    kwargs.setdefault("env", GIT_ENV)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def free_port() -> int:
    # The port could be taken between closing and the server binding it; on loopback that is rare.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(process: subprocess.Popen, port: int, timeout: float, describe: Callable[[], str]) -> None:
    """Until something accepts on 127.0.0.1:port; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}:\n{describe()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f} s:\n{describe()}")


def stop_process(process: subprocess.Popen | None) -> None:
    """SIGTERM its process group (started with start_new_session: ours alone), SIGKILL if slow."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=DAEMON_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=DAEMON_STOP_SECONDS)
    except ProcessLookupError:
        pass


@contextmanager
def running_baseline_server(script: str, workdir: Path, data_path: Path,
                            listen_timeout: float = 30) -> Iterator[tuple[subprocess.Popen, int]]:
    """`script --serve-baseline PORT DATA_PATH` (a benchmark's baseline server) in a process and
    session of its own, once it listens; stopped however the block ends."""
    port = free_port()
    log_path = workdir / "baseline.log"
    process: subprocess.Popen | None = None
    try:
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, script, "--serve-baseline", str(port), str(data_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for_port(process, port, listen_timeout, lambda: log_path.read_text(errors="replace"))
        yield process, port
    finally:
        ignore_signals()
        stop_process(process)


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile (share in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(share * len(ordered) + 0.5) - 1))
    return ordered[rank]


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def ignore_signals() -> None:
    """From here on a Ctrl-C is ignored: called when the cleanup starts, so it runs to the end."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def keep_signals_for_main_thread() -> None:
    """Call first in every helper thread.

    The kernel hands a Ctrl-C to any thread that does not block it. CPython 3.11 blocks all
    signals in the main thread while it starts a subprocess (vfork), so a Ctrl-C then lands in
    a helper thread, and the main thread was seen to notice it only many seconds later, in the
    middle of the cleanup. Blocked here, it waits for the main thread, which acts on it at once.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def raise_interrupt(signum: int, frame: object) -> None:
    # The first signal starts the cleanup; further ones must not cut it short.
    ignore_signals()
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def interrupts_become_cleanup() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP raise KeyboardInterrupt (so `finally` blocks clean up) and
    then ignore any further signal, so a second Ctrl-C cannot cut the cleanup short."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, raise_interrupt)
    try:
        yield
    finally:
        ignore_signals()


@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        ignore_signals()
        shutil.rmtree(path, ignore_errors=True)


# -- the daemon --------------------------------------------------------------------------------


@dataclass
class Daemon:
    """`disco serve` on a fresh data dir, our key as its admin, free ports, its own instance."""

    workdir: Path
    instance: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:8]}")
    ssh_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    api_key: str = ""  # the admin's, printed once by `disco init`
    process: subprocess.Popen | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def key(self) -> Path:
        return self.workdir / "bench_key"

    @property
    def log_path(self) -> Path:
        return self.workdir / "serve.log"

    def start(self) -> None:
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench@disco", "-f", str(self.key)])
        init = run([str(DISCO), "init", "--data-dir", str(self.data_dir), "--admin", "bench", "--key", f"{self.key}.pub"])
        self.api_key = init.stdout.split("(shown once, store it now): ")[1].split()[0]
        command = [
            str(DISCO), "serve", "--data-dir", str(self.data_dir), "--ssh-port", str(self.ssh_port),
            "--api-port", str(self.api_port), "--listen", "127.0.0.1", "--host", "disco.bench",
            "--instance", self.instance, "--http-port", str(self.http_port),
            "--https-port", str(self.https_port), "--no-tls", "--apps-domain", "localhost",
            "--caddy-image", CADDY_IMAGE,
        ]
        with self.log_path.open("ab") as log:
            # Its own session: a Ctrl-C in the terminal reaches us, and we stop it in order.
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for_port(self.process, self.api_port, LISTEN_TIMEOUT_SECONDS, self.log_tail)
        self._wait_for_proxy()

    def _wait_for_proxy(self) -> None:
        """The daemon starts Caddy in the background; /meta tells when it is up (or failed).
        Waiting here keeps Caddy's start-up out of the first measurement."""
        deadline = time.monotonic() + PROXY_TIMEOUT_SECONDS
        headers = {"Authorization": f"Bearer {self.api_key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", headers=headers, timeout=10) as client:
            while time.monotonic() < deadline:
                proxy = client.get("/api/v1/meta").json()["proxy"]
                if proxy["up"]:
                    return
                if proxy["error"]:
                    raise RuntimeError(f"disco serve could not start its proxy: {proxy['error']}")
                time.sleep(0.2)
        raise RuntimeError(f"the daemon's proxy was not up within {PROXY_TIMEOUT_SECONDS} s:\n{self.log_tail()}")

    def stop(self) -> None:
        stop_process(self.process)

    def remove_docker_objects(self) -> None:
        """Services, networks, images and volumes labelled with our instance, as the tests do."""
        Engine(self.instance).remove_instance()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def url(self, project: str = PROJECT) -> str:
        return f"ssh://git@127.0.0.1:{self.ssh_port}/{project}"

    def git_env(self) -> dict[str, str]:
        ssh = shlex.join([
            "ssh", "-F", os.devnull, "-i", str(self.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.workdir / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR",
        ])
        return {**GIT_ENV, "GIT_SSH_COMMAND": ssh}

    def app_url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def deployments(self, project: str = PROJECT) -> list[dict]:
        """Rows of the deployments table, oldest first (read-only: the daemon owns the file)."""
        uri = f"file:{self.data_dir / 'disco.sqlite3'}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=10) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM deployments WHERE project = ? ORDER BY number", [project])
            return [dict(row) for row in rows.fetchall()]


@contextmanager
def running_daemon(workdir: Path) -> Iterator[Daemon]:
    """A started daemon; on the way out it is stopped and its Docker objects removed."""
    daemon = Daemon(workdir)
    try:
        daemon.start()
        yield daemon
    finally:
        ignore_signals()
        daemon.stop()
        try:
            daemon.remove_docker_objects()
        except Exception as err:  # report, but let the other cleanups run
            print(f"warning: could not remove Docker objects of {daemon.instance}: {err}", file=sys.stderr)


# -- the app repo ------------------------------------------------------------------------------


def body_of(version: int) -> str:
    return f"v{version}\n"


def version_of(body: str) -> int | None:
    text = body.strip()
    return int(text[1:]) if text.startswith("v") and text[1:].isdigit() else None


def write_app(path: Path, version: int) -> None:
    """The app's build context: Dockerfile, busybox (kept executable), www/index.html = vN."""
    (path / "www").mkdir(parents=True, exist_ok=True)
    (path / "Dockerfile").write_text(APP_DOCKERFILE)
    (path / "www" / "index.html").write_text(body_of(version))
    binary = path / "busybox"
    if not binary.exists():
        shutil.copyfile(BUSYBOX, binary)
        binary.chmod(0o755)


def commit_version(repo: Path, version: int, toml: str = HEALTHY_TOML) -> None:
    """A commit that serves `vN`; `toml` is its disco.toml (a never-healthy one fails the deploy)."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        run(["git", "init", "-q", "-b", "main", str(repo)])
    write_app(repo, version)
    (repo / "disco.toml").write_text(toml)
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.com", "commit", "-q", "-m",
         f"v{version}"], cwd=repo)


# -- pushing -----------------------------------------------------------------------------------


@dataclass
class PushResult:
    returncode: int
    started: float  # time.monotonic()
    finished: float
    lines: list[tuple[float, str]]  # (monotonic time read, stderr line), `remote:` lines included

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def first_line_time(self, needle: str) -> float | None:
        return next((t for t, line in self.lines if needle in line), None)

    def tail(self, count: int = 6) -> str:
        return "\n".join(line for _, line in self.lines[-count:])


def push(daemon: Daemon, repo: Path) -> PushResult:
    """`git push` of main, timing every stderr line as it arrives (remote: lines stream live)."""
    started = time.monotonic()
    process = subprocess.Popen(["git", "push", "--progress", daemon.url(), "main"], cwd=repo,
                               env=daemon.git_env(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=_read_lines, args=(process, lines), daemon=True)
    reader.start()
    try:
        returncode = process.wait(timeout=PUSH_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        returncode = process.wait()
        lines.append((time.monotonic(), f"bench: push killed after {PUSH_TIMEOUT_SECONDS} s"))
    finished = time.monotonic()
    reader.join(5)
    return PushResult(returncode, started, finished, lines)


def _read_lines(process: subprocess.Popen, lines: list[tuple[float, str]]) -> None:
    """Split on \\n and \\r (git redraws progress with \\r) and stamp each line on arrival."""
    keep_signals_for_main_thread()
    assert process.stderr is not None
    pending = b""
    fd = process.stderr.fileno()
    while chunk := os.read(fd, 65536):
        pending += chunk
        now = time.monotonic()
        *complete, pending = pending.replace(b"\r", b"\n").split(b"\n")
        lines.extend((now, raw.decode(errors="replace").rstrip()) for raw in complete if raw.strip())
    if pending.strip():
        lines.append((time.monotonic(), pending.decode(errors="replace").rstrip()))


def wait_for_body(daemon: Daemon, body: str, timeout: float = 60) -> float:
    """Poll the app through Caddy until it answers `body`; return when it did (monotonic)."""
    deadline = time.monotonic() + timeout
    last = ""
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(daemon.app_url(), headers={"Host": APP_HOST})
                if response.status_code == 200 and response.text == body:
                    return time.monotonic()
                last = f"{response.status_code} {response.text[:80]!r}"
            except httpx.HTTPError as err:
                last = repr(err)
            time.sleep(0.02)
    raise RuntimeError(f"the app did not answer {body!r} within {timeout:.0f} s (last: {last})")



# -- measuring servers -------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process (all threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "(comm)", which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of stat


class RawConnection:
    """One keep-alive HTTP/1.1 connection, as cheap on the client's CPU as it gets: a prebuilt
    request out, the status line and Content-Length bytes in, no other parsing."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length: int | None = None
        closing = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"connection":
                closing = value.strip().lower() == b"close"
        if length is None:
            raise RuntimeError(f"a response without Content-Length: {head[:200]!r}")
        body = await self.reader.readexactly(length)
        if closing:  # the server ends the connection (after an error): the next request opens one
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


def describe_machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}, Caddy image {CADDY_IMAGE}"


RESULTS_DIR = ROOT / "bench" / "results"


def write_results(name: str, figures: dict[str, object]) -> Path:
    """Save a run's figures as bench/results/<name>.json (not committed), so runs can be compared.

    `figures` are the numbers the script printed, keyed by row; the machine and time are added.
    """
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    record = {"bench": name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": describe_machine(), "figures": figures}
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(f"figures written to {path.relative_to(ROOT)}")
    return path


def run_measurement(measure: "Callable[[argparse.Namespace, Path], None]", args: "argparse.Namespace",
                    prefix: str) -> int:
    """main() of a bench script: measure in a temp dir; Ctrl-C and errors still clean up."""
    with interrupts_become_cleanup():
        try:
            with temp_dir(prefix) as workdir:
                measure(args, workdir)
            return 0
        except KeyboardInterrupt:
            print("interrupted; cleaned up", file=sys.stderr)
            return 1
        except Exception:
            traceback.print_exc()
            return 1
