"""A Docker Swarm of several engines on this one machine, for the multi-node tests.

Each engine is a dockerd of its own in a network namespace of its own (with its own hostname,
data root, exec root, socket and pidfile), plugged into a bridge the rig makes, so each node has
an address of its own and swarm's traffic (2377, 7946, 4789/vxlan) really crosses a network.
Engine 1 initialises a separate swarm and engine 2 joins it as a worker: the host's own dockerd
and swarm are never touched. A daemon under test is pointed at engine 1 with DOCKER_HOST.
Measured (docs: /work/shared/MULTI-NODE-RECIPE.md): up in about 4 s, down in 5 to 9 s.

Everything lives under fixed names (ROOT, BRIDGE, the `disco-mn<N>` namespaces), so a rig left
behind by a run that was killed is found and removed before a new one starts; and so one machine
runs one rig at a time.

    python tests/multinode.py up | down     # by hand, as root: build it or take it down
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path("/tmp/disco-mn")  # short: a unix socket's path must fit in 108 bytes
LOGS_KEPT = Path("/tmp/disco-mn-logs")
NODE_SOCKET = Path("/run/disco-mn/docker.sock")  # each engine's own, in its own mount namespace
BRIDGE = "disco-mn"
SUBNET = "10.250.0"  # the bridge is .1, engine N is .N+1
NETNS_PREFIX = "disco-mn"
DOCKER = "/usr/bin/docker"  # Debian's client (the daemon under test uses it too)
DOCKERD = "/usr/sbin/dockerd"
FIREWALL_RULE = ["DOCKER-USER", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]  # the host's FORWARD policy is DROP
BUSYBOX_IMAGE = "disco-mn-busybox:1"  # see import_busybox
START_TIMEOUT = 90.0  # seconds for a dockerd to answer: generous, the machine is busy
STOP_TIMEOUT = 60.0


def sh(*command: str, check: bool = True, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
    kwargs.setdefault("text", True)
    result = subprocess.run(command, capture_output=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        said = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {said.strip()[-800:]}")
    return result


def wait_until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    """`check()`'s first truthy answer; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return found


@dataclass
class Engine:
    """One dockerd of the rig: node `index` (1, 2, ...), hostname mn<index>, address 10.250.0.<index+1>."""

    index: int
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def hostname(self) -> str:
        return f"mn{self.index}"

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.index}"

    @property
    def veth(self) -> str:
        return f"v{NETNS_PREFIX}{self.index}"  # the host's end; the namespace's end is eth0

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index + 1}"

    @property
    def dir(self) -> Path:
        return ROOT / f"n{self.index}"

    @property
    def socket(self) -> Path:
        return ROOT / f"n{self.index}.sock"

    @property
    def docker_host(self) -> str:
        """For DOCKER_HOST: docker-py and the docker CLI both honour it."""
        return f"unix://{self.socket}"

    @property
    def pidfile(self) -> Path:
        return self.dir / "docker.pid"

    @property
    def log(self) -> Path:
        return self.dir / "dockerd.log"

    def docker(self, *args: str, check: bool = True, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
        return sh(DOCKER, "-H", self.docker_host, *args, check=check, timeout=timeout, **kwargs)

    def answers(self) -> bool:
        return self.docker("info", "--format", "{{.ID}}", check=False, timeout=10).returncode == 0

    def swarm_state(self) -> str:
        """This engine's own view: active, inactive, pending, error, or "" when it does not answer."""
        result = self.docker("info", "--format", "{{.Swarm.LocalNodeState}}", check=False, timeout=10)
        return result.stdout.strip() if result.returncode == 0 else ""

    def config(self) -> dict[str, Any]:
        return {
            "data-root": str(self.dir / "data"), "exec-root": str(self.dir / "exec"), "pidfile": str(self.pidfile),
            # Also a socket at the same path on every engine, each in a folder of its own (see
            # start): a job mounting "the node's Docker socket" (the daemon's image pruning on the
            # other nodes, --docker-socket) reaches that node's engine, not the host's.
            "hosts": [self.docker_host, f"unix://{NODE_SOCKET}"],
            # Its own containerd namespaces, and its own engine key: they would otherwise share
            # /etc/docker/key.json with the host's dockerd, and so one engine ID.
            "containerd-namespace": self.netns, "containerd-plugins-namespace": f"{self.netns}-plugins",
            "deprecated-key-path": str(self.dir / "key.json"),
            "bip": f"172.30.{self.index}.1/24", "storage-driver": "overlay2",
        }

    def plug_in(self) -> None:
        """Its namespace and its end of a veth pair on the bridge. No default route on purpose:
        a pull of a local-only image fails at once instead of waiting on Docker Hub."""
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        sh("ip", "link", "set", self.veth, "master", BRIDGE, "up")
        sh("ip", "-n", self.netns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        sh("ip", "-n", self.netns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")

    def start(self) -> None:
        """Start its dockerd (not waiting for it: see wait_answering)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        config = ROOT / f"n{self.index}.json"
        config.write_text(json.dumps(self.config(), indent=1))
        # Not `ip netns exec`, which remounts /sys; a private mount namespace (dockerd's mounts stay
        # in it) and UTS namespace (each node its own hostname, so its own node name in swarm),
        # with NODE_SOCKET's folder its own.
        # Every step execs the next, so this process is dockerd itself: it is ours to stop and reap.
        NODE_SOCKET.parent.mkdir(exist_ok=True)
        command = ["nsenter", f"--net=/run/netns/{self.netns}", "--", "unshare", "--mount", "--uts",
                   "--propagation", "slave", "--", "sh", "-c",
                   f"hostname {self.hostname} && mount -t tmpfs disco-mn {NODE_SOCKET.parent} && "
                   f"exec {DOCKERD} --config-file {config}"]
        with self.log.open("a") as log:
            # Its own session: a Ctrl-C meant for pytest must not reach it (the teardown stops it).
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def wait_answering(self, timeout: float = START_TIMEOUT) -> None:
        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"dockerd of {self.hostname} exited {self.process.returncode}: {self.log_tail()}")
            return self.answers()
        try:
            wait_until(f"dockerd of {self.hostname} to answer", up, timeout)
        except RuntimeError as err:
            raise RuntimeError(f"{err}; its log ends: {self.log_tail()}") from None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM its dockerd and wait until it is gone (its containerd goes with it)."""
        self.signal_stop()
        self.wait_stopped(timeout)

    def signal_stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
        self.process = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Rig:
    """A swarm of `Engine`s: engine 1 the manager, the others workers joined to it."""

    def __init__(self, engines: int = 2) -> None:
        self.engines = [Engine(i) for i in range(1, engines + 1)]

    @property
    def manager(self) -> Engine:
        return self.engines[0]

    @property
    def worker(self) -> Engine:
        return self.engines[1]

    def up(self) -> Rig:
        """Build it from nothing (after removing what a killed run left), all nodes ready."""
        teardown()
        ROOT.mkdir(parents=True)
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        if sh("iptables", "-C", *FIREWALL_RULE, check=False).returncode != 0:
            sh("iptables", "-I", *FIREWALL_RULE)
        for engine in self.engines:
            engine.plug_in()
            engine.start()
        for engine in self.engines:
            engine.wait_answering()
        self.manager.docker("swarm", "init", "--advertise-addr", self.manager.address,
                            "--listen-addr", f"{self.manager.address}:2377")
        # A node that stops answering is shown down after 5 heartbeats: 1 s instead of 5 s each.
        self.manager.docker("swarm", "update", "--dispatcher-heartbeat", "1s")
        for engine in self.engines[1:]:
            self.join(engine)
        return self

    def add_engine(self) -> Engine:
        """One more engine, plugged in and answering, not in the swarm (for a test to join)."""
        engine = Engine(len(self.engines) + 1)
        self.engines.append(engine)
        engine.plug_in()
        engine.start()
        engine.wait_answering()
        return engine

    def join_token(self) -> str:
        return self.manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()

    def join(self, engine: Engine) -> None:
        engine.docker("swarm", "join", "--token", self.join_token(), "--advertise-addr", engine.address,
                      "--listen-addr", f"{engine.address}:2377", f"{self.manager.address}:2377")
        self.wait_node(engine, "ready")

    def node_state(self, engine: Engine) -> str:
        """What the manager says of that engine's node ("ready", "down", ...; "" if not a node)."""
        result = self.manager.docker("node", "inspect", engine.hostname, "--format", "{{.Status.State}}",
                                     check=False, timeout=30)
        return result.stdout.strip() if result.returncode == 0 else ""

    def wait_node(self, engine: Engine, state: str, timeout: float = 60) -> None:
        wait_until(f"node {engine.hostname} to be {state}", lambda: self.node_state(engine) == state, timeout)

    def stop_engine(self, engine: Engine) -> None:
        """Stop a node's dockerd (as a machine that fails would go); the manager sees it down later."""
        engine.stop()

    def start_engine(self, engine: Engine) -> None:
        """Start a stopped node's dockerd again; it rejoins its swarm by itself."""
        engine.start()
        engine.wait_answering()

    def load_image(self, image: str, engine: Engine) -> None:
        """Copy an image from the host's dockerd into an engine of the rig (`docker save | load`)."""
        save = subprocess.Popen([DOCKER, "save", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        loaded = subprocess.run([DOCKER, "-H", engine.docker_host, "load", "-q"], stdin=save.stdout,
                                capture_output=True, text=True, timeout=300)
        assert save.stdout is not None
        save.stdout.close()
        saved = save.wait(300)
        if saved != 0 or loaded.returncode != 0:
            raise RuntimeError(f"docker save {image} | load into {engine.hostname} failed: "
                               f"{(save.stderr.read() if save.stderr else b'').decode()[-400:]} {loaded.stderr[-400:]}")

    def down(self) -> None:
        LOGS_KEPT.mkdir(exist_ok=True)  # the last rig's dockerd logs, for a failure's post-mortem
        for engine in self.engines:
            if engine.log.exists():
                shutil.copy(engine.log, LOGS_KEPT / f"{engine.hostname}.log")
        for engine in self.engines:
            engine.docker("swarm", "leave", "--force", check=False, timeout=60)
        for engine in self.engines:  # all at once: each takes seconds to stop
            engine.signal_stop()
        for engine in self.engines:
            engine.wait_stopped()
        teardown()


def import_busybox(engine: Engine) -> None:
    """BUSYBOX_IMAGE in that engine: the host's static busybox as /bin/busybox, one layer made
    with `docker import` (no build, no registry)."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(shutil.which("busybox") or "/bin/busybox", arcname="bin/busybox")
    engine.docker("import", "-", BUSYBOX_IMAGE, input=archive.getvalue(), text=False)


def stop_pids(pids: list[int], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM dockerds an earlier run left (not our children: we cannot reap them, only wait),
    all at once; SIGKILL for any still there after `timeout`."""
    pids = [pid for pid in pids if _is_rig_dockerd(pid)]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    try:
        wait_until("the rig's dockerds to stop", lambda: not any(_is_rig_dockerd(pid) for pid in pids), timeout)
    except RuntimeError:
        for pid in pids:
            if _is_rig_dockerd(pid):
                os.kill(pid, signal.SIGKILL)


def _is_rig_dockerd(pid: int) -> bool:
    """The process is a dockerd of this rig (its config under ROOT), not whatever reused the pid."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and any(part.startswith(str(ROOT).encode() + b"/") for part in command) \
        and command[0].endswith(b"dockerd")


def _rig_dockerds() -> Iterator[int]:
    """dockerds started by an earlier run, whose pidfile may be gone: those with a config under ROOT."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_rig_dockerd(int(entry.name)):
            yield int(entry.name)


def teardown() -> None:
    """Remove whatever a rig left: its dockerds, namespaces, bridge, firewall rule and files.
    Safe to call when nothing is there; used before a rig is built and after it is taken down."""
    stop_pids(list(_rig_dockerds()))
    namespaces = sh("ip", "netns", "list", check=False).stdout.split("\n")
    for line in namespaces:
        name = line.split(" ")[0]
        if name.startswith(NETNS_PREFIX) and name[len(NETNS_PREFIX):].isdigit():
            sh("ip", "netns", "del", name, check=False)  # its veth end goes with it, and so the host's
    if sh("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        sh("ip", "link", "del", BRIDGE)
    while sh("iptables", "-C", *FIREWALL_RULE, check=False).returncode == 0:
        sh("iptables", "-D", *FIREWALL_RULE)
    if ROOT.exists():
        shutil.rmtree(ROOT)


if __name__ == "__main__":
    if sys.argv[1:] == ["up"]:
        rig = Rig().up()
        print(f"manager {rig.manager.address}: DOCKER_HOST={rig.manager.docker_host}")
        print(f"worker  {rig.worker.address}: DOCKER_HOST={rig.worker.docker_host}")
    elif sys.argv[1:] == ["down"]:
        teardown()
    else:
        print(__doc__.rsplit("\n\n", 1)[-1], file=sys.stderr)
        sys.exit(2)
