"""Shared fixtures: a real `disco serve` subprocess, real SSH keys, and real git clients."""

from __future__ import annotations

import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from hooks.platform import Platform
from runtime.caddy import CaddyAdmin
from runtime.docker_engine import Engine
from runtime.settings import Settings, ensure_layout
from runtime.store import Store

BIN = Path(sys.executable).parent
# setup.sh exports the image it made sure of; a bare `pytest` falls back to the local build.
CADDY_IMAGE = os.environ.get("DISCO_CADDY_IMAGE", "disco-caddy:debian")
DISCO = str(BIN / "disco")
HERE = Path(__file__).parent


def docker_available() -> bool:
    return subprocess.run(["/usr/bin/docker", "info"], capture_output=True).returncode == 0


def require_docker() -> None:
    """Skip without Docker, except under CI, where a missing Docker is a failure."""
    if not docker_available():
        if os.environ.get("CI") == "true":
            pytest.fail("Docker is not available, but CI=true requires it (./setup.sh test starts it)")
        pytest.skip("no Docker engine here; ./setup.sh test starts one")


_handed_out: set[int] = set()


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768+ here).

    Caddy's ports are bound only once its task starts, seconds later; a port from the ephemeral
    range could by then be the source port of one of the test's own connections.
    """
    while True:
        port = random.randint(20000, 32000)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 120)
    return subprocess.run(cmd, **kwargs)


@dataclass
class Key:
    path: Path

    @property
    def public(self) -> Path:
        return self.path.with_name(self.path.name + ".pub")

    @property
    def fingerprint(self) -> str:
        out = run(["ssh-keygen", "-lf", str(self.public)], check=True).stdout
        return out.split()[1]


@pytest.fixture
def make_key(tmp_path: Path):
    def make(name: str, kind: str = "ed25519") -> Key:
        path = tmp_path / "keys" / name
        path.parent.mkdir(exist_ok=True)
        run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"{name}@test", "-f", str(path)], check=True)
        return Key(path)

    return make


@dataclass
class Disco:
    """A data dir, the `disco` CLI on it, and a daemon started on demand."""

    data_dir: Path
    workdir: Path
    ssh_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    # Each daemon owns its Docker objects through a unique instance name, removed after the test.
    instance: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)  # for the daemon's process
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    log_offset: int = 0  # where the current run's lines start in the log
    api_key: str = ""  # alice's, printed by `disco init`
    api_port: int = field(default_factory=free_port)

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return run([DISCO, *args, "--data-dir", str(self.data_dir)], input=input)

    def start(self) -> None:
        self.log_path = self.workdir / "serve.log"
        log = self.log_path.open("a")
        self.log_offset = len(self.log())  # a restart appends to the same log
        self.process = subprocess.Popen(
            [DISCO, "serve", "--data-dir", str(self.data_dir), "--ssh-port", str(self.ssh_port),
             "--listen", "127.0.0.1", "--host", "disco.test", "--instance", self.instance,
             "--http-port", str(self.http_port), "--api-port", str(self.api_port), "--https-port", str(self.https_port), "--no-tls",
             "--apps-domain", "localhost", "--caddy-image", CADDY_IMAGE, *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.extra_env},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"disco serve exited: {self.log()}")
            try:
                for port in (self.ssh_port, self.api_port):  # the API opens just after SSH
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"disco serve did not listen: {self.log()}")

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        """Wait until the running daemon (not an earlier run in the same log) has logged `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.log()[self.log_offset:]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not log {text!r}: {self.log()}")
            time.sleep(0.05)

    def wait_for_proxy(self) -> None:
        """Caddy starts beside the SSH server, not before it."""
        self.wait_for_log("proxy up")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def get(self, host: str, path: str = "/", timeout: float = 10) -> httpx.Response:
        """A request through Caddy, as a browser asking for `host` would make it."""
        return httpx.get(f"http://127.0.0.1:{self.http_port}{path}", headers={"Host": host}, timeout=timeout)

    def api(self, method: str, path: str, body: dict | None = None, **params: object) -> httpx.Response:
        """The daemon's REST API as alice (her key from `disco init`)."""
        return httpx.request(method, f"http://127.0.0.1:{self.api_port}/api/v1{path}", json=body, params=params,
                             headers={"Authorization": f"Bearer {self.api_key}"}, timeout=60)

    def finished_deployment(self, project: str, number: int, timeout: float = 180) -> dict:
        """The deployment's record once it is done (failed, or live and cleaned up after
        itself: it is live a moment before that), through the API."""
        def ended() -> dict | None:
            found = self.api("GET", f"/projects/{project}/deployments/{number}").json()
            return found if found["finished_at"] else None
        return wait_for(f"deployment #{number} of {project}", ended, timeout, every=0.1)

    def cleaned_up(self, project: str, timeout: float = 180) -> dict:
        """The project's newest deployment once done: a push returns as soon as its deployment
        is live, and retiring what that replaced (services, images, static sites) goes on."""
        newest = self.api("GET", f"/projects/{project}/deployments", limit=1).json()[0]
        return self.finished_deployment(project, newest["number"], timeout)

    def remove_docker_objects(self) -> None:
        if docker_available():
            Engine(self.instance).remove_instance()

    def url(self, project: str) -> str:
        return f"ssh://git@127.0.0.1:{self.ssh_port}/{project}"

    def ssh_command(self, key: Key, *extra: str) -> list[str]:
        return [
            "ssh", "-i", str(key.path), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.workdir / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR", *extra,
        ]

    def git_env(self, key: Key, wrapper: list[str] | None = None) -> dict[str, str]:
        command = shlex.join([*(wrapper or []), *self.ssh_command(key)])
        return {**os.environ, "GIT_SSH_COMMAND": command, "GIT_TERMINAL_PROMPT": "0"}

    def git(self, key: Key, *args: str, cwd: Path | None = None, wrapper: list[str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        return run(["git", *args], cwd=cwd, env=self.git_env(key, wrapper), timeout=timeout)

    def repo_dir(self, project: str) -> Path:
        return self.data_dir / "repos" / f"{project}.git"


@pytest.fixture
def disco(tmp_path: Path):
    server = Disco(data_dir=tmp_path / "data", workdir=tmp_path)
    result = server.cli("init", "--admin", "alice")
    assert result.returncode == 0, result.stderr
    server.api_key = result.stdout.split("(shown once, store it now): ")[1].split()[0]
    yield server
    if server.process is not None:
        server.stop(signal.SIGKILL)
    server.remove_docker_objects()


@pytest.fixture
def admin_key(disco: Disco, make_key) -> Key:
    key = make_key("alice")
    result = disco.cli("init", "--admin", "alice", "--key", str(key.public))
    assert result.returncode == 0, result.stderr
    return key


@pytest.fixture
def running(disco: Disco, admin_key: Key) -> Disco:
    disco.start()
    return disco


class Poller:
    """Requests the app through Caddy every 50 ms in the background and counts what fails.

    keep_alive=False opens a new connection per request: what a route change (a Caddy reload,
    which resets some idle keep-alive connections) must not fail either.
    """

    def __init__(self, disco: Disco, host: str = "myapp.localhost", keep_alive: bool = True,
                 address: str = "127.0.0.1") -> None:
        self.disco, self.host, self.keep_alive, self.address = disco, host, keep_alive, address
        self.bodies: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        kept = 20 if self.keep_alive else 0  # httpx keeps 20 by default
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=kept)) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(f"http://{self.address}:{self.disco.http_port}/", headers={"Host": self.host})
                    if response.status_code == 200:
                        self.bodies.append(response.text)
                    else:
                        self.errors.append(f"{response.status_code} {response.text[:80]}")
                except httpx.HTTPError as err:
                    self.errors.append(repr(err))
                time.sleep(0.05)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def api_platform(settings: Settings, users: dict[str, str] | None = None) -> Platform:
    """The hooks layer for API tests: a fresh store with `users` (name -> role, alice the admin
    by default), the real Engine, and a proxy that is known not to run."""
    ensure_layout(settings)
    store = Store(settings.db_path)
    for name, role in (users or {"alice": "admin"}).items():
        store.add_user(name, role)
    platform = Platform.create(settings, store, Engine(settings.instance), CaddyAdmin(settings.run_dir))
    platform.router.proxy_ready.set()
    platform.router.proxy_error = "no proxy in these tests"
    return platform


def make_repo(path: Path, files: dict[str, bytes | str] | None = None, message: str = "first",
              branch: str = "main") -> Path:
    """A work tree with one commit on `branch`."""
    path.mkdir(parents=True, exist_ok=True)
    run(["git", "init", "-q", "-b", branch, str(path)], check=True)
    commit(path, files or {"README": "hello\n"}, message)
    return path


def commit(path: Path, files: dict[str, bytes | str], message: str) -> str:
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
            if content.startswith(b"\x7fELF"):  # a binary for the image must stay executable
                target.chmod(0o755)
        else:
            target.write_text(content)
    run(["git", "add", "-A"], cwd=path, check=True)
    run(["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", "commit", "-q", "-m", message],
        cwd=path, check=True)
    return head(path)


def head(path: Path, ref: str = "HEAD") -> str:
    return run(["git", "rev-parse", ref], cwd=path, check=True).stdout.strip()


def server_ref(disco: Disco, project: str, ref: str = "refs/heads/main") -> str | None:
    result = run(["git", "--git-dir", str(disco.repo_dir(project)), "rev-parse", "--verify", "-q", ref])
    return result.stdout.strip() or None


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, every: float = 0.2) -> Any:
    """`check()`'s first truthy answer, asked every `every` seconds; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)
    return found


def laptop_cli(disco: Disco, home: Path):
    """The `disco` command logged in to the daemon's API, with a home of its own."""
    home.mkdir(exist_ok=True)
    env = {**os.environ, "XDG_CONFIG_HOME": str(home / "xdg"), "HOME": str(home)}
    env.pop("DISCO_DATA_DIR", None)

    def cli(*args: str, input: str | None = None, timeout: float = 120):
        return run([DISCO, *args], cwd=home, env=env, input=input, timeout=timeout)

    assert cli("login", f"http://127.0.0.1:{disco.api_port}", input=disco.api_key + "\n").returncode == 0
    return cli


def shared_disco(workdir: Path, extra_args: list[str] | None = None, users: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None, ports: dict[str, int] | None = None):
    """A started daemon with admin alice (and `users`, admins too) for a module-scoped fixture.

    Yields (disco, alice's key) or, with users, (disco, {name: key}); stops the daemon after.
    """
    server = Disco(data_dir=workdir / "data", workdir=workdir, extra_args=list(extra_args or []),
                   extra_env=dict(extra_env or {}), **(ports or {}))
    keys: dict[str, Key] = {}
    for name in ("alice", *users):
        path = workdir / "keys" / name
        path.parent.mkdir(exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(path)], check=True)
        keys[name] = Key(path)
    result = server.cli("init", "--admin", "alice", "--key", str(keys["alice"].public))
    assert result.returncode == 0, result.stderr
    server.api_key = result.stdout.split("(shown once, store it now): ")[1].split()[0]
    for name in users:
        assert server.cli("users:add", name, "--role", "admin").returncode == 0
        assert server.cli("keys:add", name, str(keys[name].public)).returncode == 0
    server.start()
    try:
        yield (server, keys) if users else (server, keys["alice"])
    finally:
        if server.process is not None:
            server.stop(signal.SIGKILL)
        server.remove_docker_objects()


# -- the dashboard in a real browser ----------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright's own download cannot work here
SCREENSHOTS = Path(os.environ.get("DISCO_TEST_OUTPUT", Path(__file__).parent.parent / "test-output")) / "screenshots"


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium driven by Playwright, one per module (starting one costs about
    a second; contexts keep the tests apart). Fails instead of skipping under CI."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: ./setup.sh test installs Debian's chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def browser_page(browser: Any, disco: Disco, key: str | None = None) -> Any:
    """A page in a fresh browser context (its own cookies), signed in with `key` if given.
    Any dialog it opens is recorded in page.dialogs and dismissed; a confirm() is accepted."""
    context = browser.new_context(base_url=f"http://127.0.0.1:{disco.api_port}")
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.dialogs = []

    def on_dialog(dialog: Any) -> None:
        page.dialogs.append((dialog.type, dialog.message))
        dialog.accept() if dialog.type == "confirm" else dialog.dismiss()

    page.on("dialog", on_dialog)
    if key is not None:
        page.goto("/sign-in")
        page.fill("input[name=key]", key)
        page.click("button[type=submit]")
        page.wait_for_url(f"http://127.0.0.1:{disco.api_port}/")
    return page


def screenshot(page: Any, name: str) -> None:
    """Kept for a person to look at: test-output/screenshots/NAME.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
