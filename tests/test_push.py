"""git push / fetch over SSH against a real `disco serve`, with the real git and OpenSSH clients."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import conftest
from conftest import HERE, Disco, Key, commit, free_port, head, run, server_ref

RELAY = [sys.executable, str(HERE / "ssh_relay.py")]
# These tests are about git over SSH, so they push a branch that is stored and not deployed;
# deploying the deploy branch is covered in test_deploy.py.
BRANCH = "dev"


def make_repo(path: Path, files: dict | None = None, message: str = "first", branch: str = BRANCH) -> Path:
    return conftest.make_repo(path, files, message, branch)


def stored(disco: Disco, project: str) -> str | None:
    return server_ref(disco, project, f"refs/heads/{BRANCH}")


def wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


class StalledPush:
    """A push through the relay that has read the refs and stalls inside its pack until released."""

    def __init__(self, disco: Disco, key: Key, project: str, repo: Path, tmp_path: Path) -> None:
        self._gate = tmp_path / f"release-{project}"
        self.result: subprocess.CompletedProcess | None = None
        self._thread = threading.Thread(target=self._push, args=(disco, key, project, repo))
        self._thread.start()
        wait_for(Path(f"{self._gate}.reached"))

    def _push(self, disco: Disco, key: Key, project: str, repo: Path) -> None:
        self.result = disco.git(key, "push", disco.url(project), BRANCH, cwd=repo,
                                wrapper=[*RELAY, "--after", "100000", "--pause-until", str(self._gate), "--"])

    def release(self) -> subprocess.CompletedProcess:
        self._gate.touch()
        self._thread.join(60)
        assert self.result is not None, "the released push never finished"
        return self.result


def big_repo(path: Path, megabytes: int = 4) -> Path:
    """A repo whose pack is large enough that a push is still sending when a test steps in."""
    return make_repo(path, {"blob.bin": os.urandom(megabytes << 20), "README": "big\n"})


def test_admin_first_push_creates_project_and_reports(running: Disco, admin_key: Key, tmp_path: Path):
    repo = make_repo(tmp_path / "app")
    result = running.git(admin_key, "push", running.url("myapp"), BRANCH, cwd=repo)
    assert result.returncode == 0, result.stderr
    sha = head(repo)
    assert "remote: created project myapp" in result.stderr
    assert f"remote: {BRANCH} -> {sha[:7]} stored (only main deploys)" in result.stderr
    assert stored(running, "myapp") == sha
    assert (running.repo_dir("myapp") / "HEAD").read_text().strip() == "ref: refs/heads/main"
    assert "push user=alice project=myapp" in running.log() and "result=ok" in running.log()


@pytest.mark.parametrize("path", ["myapp.git", "/myapp.git", "myapp"])
def test_url_forms_reach_the_same_repo(running: Disco, admin_key: Key, tmp_path: Path, path: str):
    repo = make_repo(tmp_path / "app")
    # The scp form `git@host:path` sends the path without a leading slash.
    ssh = running.ssh_command(admin_key, "-p", str(running.ssh_port))
    env = {**os.environ, "GIT_SSH_COMMAND": " ".join(ssh)}
    result = run(["git", "push", f"git@127.0.0.1:{path}", BRANCH], cwd=repo, env=env)
    assert result.returncode == 0, result.stderr
    assert stored(running, "myapp") == head(repo)
    assert sorted(p.name for p in (running.data_dir / "repos").iterdir()) == ["myapp.git"]


def test_clone_fetch_ls_remote_tags_branches_and_force_push(running: Disco, admin_key: Key, tmp_path: Path):
    repo = make_repo(tmp_path / "app")
    run(["git", "tag", "v1"], cwd=repo, check=True)
    run(["git", "checkout", "-q", "-b", "feature"], cwd=repo, check=True)
    feature_sha = commit(repo, {"feature.txt": "f\n"}, "feature work")
    run(["git", "checkout", "-q", BRANCH], cwd=repo, check=True)
    result = running.git(admin_key, "push", running.url("myapp"), BRANCH, "feature", "--tags", cwd=repo)
    assert result.returncode == 0, result.stderr

    listing = running.git(admin_key, "ls-remote", running.url("myapp"), cwd=repo)
    refs = dict(reversed(line.split("\t")) for line in listing.stdout.splitlines())
    assert refs[f"refs/heads/{BRANCH}"] == head(repo)
    assert refs["refs/heads/feature"] == feature_sha
    assert refs["refs/tags/v1"] == head(repo)

    clone = tmp_path / "clone"
    result = running.git(admin_key, "clone", "-q", "-b", BRANCH, running.url("myapp"), str(clone))
    assert result.returncode == 0, result.stderr
    assert head(clone) == head(repo) and (clone / "README").read_text() == "hello\n"

    second = commit(repo, {"README": "second\n"}, "second")
    assert running.git(admin_key, "push", running.url("myapp"), BRANCH, cwd=repo).returncode == 0
    assert running.git(admin_key, "fetch", "-q", "origin", cwd=clone).returncode == 0
    assert head(clone, f"origin/{BRANCH}") == second

    # Rewrite history and force-push: allowed, like Heroku.
    run(["git", "reset", "-q", "--hard", "HEAD~1"], cwd=repo, check=True)
    rewritten = commit(repo, {"README": "rewritten\n"}, "rewritten")
    refused = running.git(admin_key, "push", running.url("myapp"), BRANCH, cwd=repo)
    assert refused.returncode != 0 and stored(running, "myapp") == second
    forced = running.git(admin_key, "push", "--force", running.url("myapp"), BRANCH, cwd=repo)
    assert forced.returncode == 0, forced.stderr
    assert stored(running, "myapp") == rewritten
    fsck = run(["git", "--git-dir", str(running.repo_dir("myapp")), "fsck", "--strict"])
    assert fsck.returncode == 0, fsck.stderr


def test_other_branches_can_be_deleted(running: Disco, admin_key: Key, tmp_path: Path):
    repo = make_repo(tmp_path / "app")
    run(["git", "branch", "old"], cwd=repo, check=True)
    assert running.git(admin_key, "push", running.url("myapp"), BRANCH, "old", cwd=repo).returncode == 0
    deleted = running.git(admin_key, "push", running.url("myapp"), ":old", cwd=repo)
    assert deleted.returncode == 0, deleted.stderr
    assert "remote: old deleted" in deleted.stderr
    assert server_ref(running, "myapp", "refs/heads/old") is None
    assert stored(running, "myapp") == head(repo)


def test_deploy_branch_without_dockerfile_is_refused_before_the_ref_moves(
    running: Disco, admin_key: Key, tmp_path: Path
):
    repo = make_repo(tmp_path / "app", branch="main")
    result = running.git(admin_key, "push", running.url("myapp"), "main", cwd=repo)
    assert result.returncode != 0
    assert "[remote rejected] main -> main (no Dockerfile at Dockerfile: Disco builds the app from it)" in result.stderr
    assert not running.repo_dir("myapp").exists()  # a refused first push leaves nothing


def test_malformed_disco_toml_is_refused_naming_key_and_line(running: Disco, admin_key: Key, tmp_path: Path):
    repo = make_repo(tmp_path / "app", {"Dockerfile": "FROM scratch\n", "disco.toml": "[services.web]\nprot = 80\n"},
                     branch="main")
    result = running.git(admin_key, "push", running.url("myapp"), "main", cwd=repo)
    assert result.returncode != 0
    assert "(disco.toml line 2: unknown key 'services.web.prot'" in result.stderr
    assert server_ref(running, "myapp") is None


HOSTILE_PATHS = [
    "../x", "/etc/passwd", "a;rm -rf /", "my app", "My-App", "app'quote", 'app"dq', "café", "",
    "-app", "1app", "a" * 64, "x/../../y", "app.git.git", "$(id)",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_project_names_are_refused_and_nothing_is_created(
    running: Disco, admin_key: Key, tmp_path: Path, path: str
):
    repo = make_repo(tmp_path / "app")
    url = f"ssh://git@127.0.0.1:{running.ssh_port}/{path}"
    result = running.git(admin_key, "push", url, BRANCH, cwd=repo)
    assert result.returncode != 0
    assert "a project name is a lowercase DNS label" in result.stderr
    assert list((running.data_dir / "repos").iterdir()) == []
    assert not Path("/x").exists() and not (running.data_dir / "x").exists()


def test_deployer_needs_a_grant_and_cannot_create(running: Disco, admin_key: Key, make_key, tmp_path: Path):
    bob = make_key("bob")
    assert running.cli("users:add", "bob", "--role", "deployer").returncode == 0
    assert running.cli("keys:add", "bob", str(bob.public)).returncode == 0
    repo = make_repo(tmp_path / "app")

    created = running.git(bob, "push", running.url("newapp"), BRANCH, cwd=repo)
    assert created.returncode != 0
    assert "has no access to project 'newapp'" in created.stderr
    assert not running.repo_dir("newapp").exists()

    assert running.git(admin_key, "push", running.url("myapp"), BRANCH, cwd=repo).returncode == 0
    denied = running.git(bob, "push", running.url("myapp"), BRANCH, cwd=repo)
    assert "has no access to project 'myapp'" in denied.stderr
    assert running.git(bob, "ls-remote", running.url("myapp")).returncode != 0

    assert running.cli("users:grant", "bob", "myapp").returncode == 0
    new_sha = commit(repo, {"README": "by bob\n"}, "bob's change")
    allowed = running.git(bob, "push", running.url("myapp"), BRANCH, cwd=repo)
    assert allowed.returncode == 0, allowed.stderr
    assert stored(running, "myapp") == new_sha

    # Granted a name that does not exist yet: still may not create it.
    assert running.cli("users:grant", "bob", "ghost").returncode == 0
    ghost = running.git(bob, "push", running.url("ghost"), BRANCH, cwd=repo)
    assert "only admins can create projects" in ghost.stderr

    assert running.cli("users:revoke", "bob", "myapp").returncode == 0
    assert running.git(bob, "ls-remote", running.url("myapp")).returncode != 0


def test_unknown_and_removed_keys_are_denied(running: Disco, admin_key: Key, make_key, tmp_path: Path):
    stranger = make_key("stranger")
    repo = make_repo(tmp_path / "app")
    denied = running.git(stranger, "push", running.url("myapp"), BRANCH, cwd=repo)
    assert denied.returncode != 0
    assert "Permission denied (publickey)" in denied.stderr

    carol = make_key("carol")
    assert running.cli("users:add", "carol", "--role", "admin").returncode == 0
    assert running.cli("keys:add", "carol", str(carol.public)).returncode == 0
    assert running.git(carol, "push", running.url("myapp"), BRANCH, cwd=repo).returncode == 0
    assert running.cli("keys:remove", carol.fingerprint).returncode == 0
    after = running.git(carol, "ls-remote", running.url("myapp"))
    assert "Permission denied (publickey)" in after.stderr


def test_password_and_keyboard_interactive_are_not_offered(running: Disco, make_key):
    key = make_key("nobody")
    for method in ("password", "keyboard-interactive"):
        result = run(running.ssh_command(key, "-p", str(running.ssh_port), "-o", "PubkeyAuthentication=no",
                                         "-o", f"PreferredAuthentications={method}", "git@127.0.0.1", "true"))
        assert result.returncode == 255
        assert "Permission denied (publickey)" in result.stderr


def test_shell_explains_itself_and_other_requests_are_refused(running: Disco, admin_key: Key, tmp_path: Path):
    ssh = running.ssh_command(admin_key, "-p", str(running.ssh_port))
    shell = run([*ssh, "-T", "git@127.0.0.1"])
    assert shell.returncode == 1
    assert "Hi alice!" in shell.stderr and "git remote add disco ssh://git@disco.test:" in shell.stderr

    pty = run([*ssh, "-tt", "git@127.0.0.1"], stdin=subprocess.DEVNULL)
    assert "PTY allocation request failed" in pty.stderr and pty.returncode != 0

    command = run([*ssh, "git@127.0.0.1", "cat /etc/passwd"])
    assert command.returncode == 1 and "only accepts git push and git fetch" in command.stderr
    assert "root:" not in command.stdout

    subsystem = run([*ssh, "-s", "git@127.0.0.1", "sftp"])
    assert subsystem.returncode == 255 and "subsystem request failed" in subsystem.stderr

    remote_forward = run([*ssh, "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9", "git@127.0.0.1", "true"])
    assert remote_forward.returncode == 255 and "forwarding failed" in remote_forward.stderr

    # Local forwarding: the tunnel opens on our side, the server refuses each channel.
    local_port = free_port()
    tunnel = subprocess.Popen([*ssh, "-N", "-L", f"{local_port}:127.0.0.1:{running.ssh_port}", "git@127.0.0.1"],
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", local_port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        conn.settimeout(5)
        assert conn.recv(100) == b""  # closed at once: no SSH banner came through the tunnel
        conn.close()
    finally:
        tunnel.kill()
        tunnel.communicate(timeout=10)


def test_interrupted_push_changes_no_ref_and_leaves_no_temp_pack(running: Disco, admin_key: Key, tmp_path: Path):
    repo = make_repo(tmp_path / "app")
    first = head(repo)
    assert running.git(admin_key, "push", running.url("myapp"), BRANCH, cwd=repo).returncode == 0
    commit(repo, {"blob.bin": os.urandom(4 << 20)}, "big")
    marker = tmp_path / "cut"
    result = running.git(admin_key, "push", running.url("myapp"), BRANCH, cwd=repo,
                         wrapper=[*RELAY, "--after", "200000", "--cut", str(marker), "--"])
    assert result.returncode != 0
    assert Path(f"{marker}.reached").exists()
    assert stored(running, "myapp") == first
    objects = running.repo_dir("myapp") / "objects"
    deadline = time.monotonic() + 10
    while list(objects.glob("tmp_pack_*")) or list((objects / "pack").glob("tmp_*")):
        assert time.monotonic() < deadline, list(objects.rglob("tmp*"))
        time.sleep(0.1)
    # And the next push goes through.
    retry = running.git(admin_key, "push", running.url("myapp"), BRANCH, cwd=repo)
    assert retry.returncode == 0, retry.stderr
    assert stored(running, "myapp") == head(repo)


def test_interrupted_first_push_leaves_no_project_behind(running: Disco, admin_key: Key, tmp_path: Path):
    repo = big_repo(tmp_path / "app")
    marker = tmp_path / "cut"
    result = running.git(admin_key, "push", running.url("newapp"), BRANCH, cwd=repo,
                         wrapper=[*RELAY, "--after", "200000", "--cut", str(marker), "--"])
    assert result.returncode != 0
    deadline = time.monotonic() + 10
    while running.repo_dir("newapp").exists():
        assert time.monotonic() < deadline, "empty repo of a failed first push was kept"
        time.sleep(0.1)


def test_concurrent_pushes_to_one_repo_one_wins_the_other_is_told(running: Disco, admin_key: Key, tmp_path: Path):
    base = make_repo(tmp_path / "base")
    assert running.git(admin_key, "push", running.url("myapp"), BRANCH, cwd=base).returncode == 0
    slow = tmp_path / "slow"
    fast = tmp_path / "fast"
    for clone in (slow, fast):
        assert running.git(admin_key, "clone", "-q", "-b", BRANCH, running.url("myapp"), str(clone)).returncode == 0
    commit(slow, {"blob.bin": os.urandom(2 << 20)}, "slow change")
    fast_sha = commit(fast, {"fast.txt": "fast\n"}, "fast change")

    # The slow push has read the refs and is sending its pack when the fast one lands.
    slow_push = StalledPush(running, admin_key, "myapp", slow, tmp_path)
    fast_result = running.git(admin_key, "push", running.url("myapp"), BRANCH, cwd=fast)
    assert fast_result.returncode == 0, fast_result.stderr
    slow_result = slow_push.release()

    assert slow_result.returncode != 0
    assert "the ref moved while you pushed; fetch, then push again" in slow_result.stderr
    assert stored(running, "myapp") == fast_sha
    fsck = run(["git", "--git-dir", str(running.repo_dir("myapp")), "fsck"])
    assert fsck.returncode == 0, fsck.stderr


def test_pushes_to_different_projects_run_in_parallel(running: Disco, admin_key: Key, tmp_path: Path):
    stalled_repo = big_repo(tmp_path / "one", megabytes=2)
    other = make_repo(tmp_path / "two")
    stalled = StalledPush(running, admin_key, "one", stalled_repo, tmp_path)
    quick = running.git(admin_key, "push", running.url("two"), BRANCH, cwd=other, timeout=30)
    assert quick.returncode == 0, quick.stderr
    assert stalled.result is None, "the first push should still be stalled"
    released = stalled.release()
    assert released.returncode == 0, released.stderr


def memory_kib(pid: int, field: str) -> int:
    """A kB line of /proc/<pid>/status: VmRSS, VmHWM (the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_a_large_push_costs_the_daemon_a_chunk_of_it_and_leaves_nothing_behind(
        running: Disco, admin_key: Key, tmp_path: Path):
    # dulwich's receiver held each object whole, several times over, and the daemon kept much
    # of it: 64 MiB of random data made it peak 180 MiB higher and stay 90 MiB higher.
    assert running.process is not None
    pid = running.process.pid
    warm = running.git(admin_key, "push", running.url("warm"), BRANCH, cwd=make_repo(tmp_path / "warm"))
    assert warm.returncode == 0, warm.stderr  # the code a push runs is loaded before we measure
    repo = make_repo(tmp_path / "large", {"blob.bin": os.urandom(64 << 20)})
    before = memory_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    pushed = running.git(admin_key, "push", running.url("large"), BRANCH, cwd=repo, timeout=300)
    assert pushed.returncode == 0, pushed.stderr
    peak = memory_kib(pid, "VmHWM")
    assert peak - before < 32 << 10, f"a push of a 64 MiB file made the daemon peak {(peak - before) >> 10} MiB higher"
    # The daemon gives its freed memory back once the pusher has the answer (gitserver/server.py).
    deadline = time.monotonic() + 10
    while (after := memory_kib(pid, "VmRSS")) - before >= 16 << 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after - before < 16 << 10, f"a push of a 64 MiB file left the daemon {(after - before) >> 10} MiB larger"
    assert stored(running, "large") == head(repo)


def test_push_over_the_size_limit_is_refused(disco: Disco, admin_key: Key, tmp_path: Path):
    disco.extra_args = ["--max-push-size", "100000"]
    disco.start()
    repo = make_repo(tmp_path / "small")
    assert disco.git(admin_key, "push", disco.url("myapp"), BRANCH, cwd=repo).returncode == 0
    commit(repo, {"blob.bin": os.urandom(1 << 20)}, "too big")
    result = disco.git(admin_key, "push", disco.url("myapp"), BRANCH, cwd=repo)
    assert result.returncode != 0
    assert "larger than the server's limit of 97.66 KiB" in result.stderr
    assert stored(disco, "myapp") != head(repo)


def test_restart_keeps_host_key_and_data(disco: Disco, admin_key: Key, tmp_path: Path):
    disco.start()
    repo = make_repo(tmp_path / "app")
    assert disco.git(admin_key, "push", disco.url("myapp"), BRANCH, cwd=repo).returncode == 0
    assert disco.stop() == 0
    key_mode = (disco.data_dir / "ssh_host_ed25519_key").stat().st_mode & 0o777
    assert key_mode == 0o600
    disco.start()
    strict = {**disco.git_env(admin_key)}
    strict["GIT_SSH_COMMAND"] = strict["GIT_SSH_COMMAND"].replace("StrictHostKeyChecking=accept-new",
                                                                  "StrictHostKeyChecking=yes")
    result = run(["git", "ls-remote", disco.url("myapp")], env=strict)
    assert result.returncode == 0, result.stderr
    assert head(repo) in result.stdout
    assert "WARNING" not in result.stderr


def test_sigterm_lets_an_inflight_push_finish(disco: Disco, admin_key: Key, tmp_path: Path):
    disco.start()
    repo = big_repo(tmp_path / "app", megabytes=2)
    push = StalledPush(disco, admin_key, "myapp", repo, tmp_path)
    assert disco.process is not None
    disco.process.send_signal(signal.SIGTERM)
    disco.wait_for_log("waiting for 1 session(s) to finish", timeout=10)  # the acceptor is closed
    # No new connections while draining...
    refused = disco.git(admin_key, "ls-remote", disco.url("myapp"), timeout=30)
    assert refused.returncode != 0
    # ...but the push in flight completes, then the daemon exits cleanly.
    pushed = push.release()
    assert pushed.returncode == 0, pushed.stderr
    assert stored(disco, "myapp") == head(repo)
    assert disco.process.wait(timeout=30) == 0  # exits by itself once the push is done


def test_each_read_of_a_connection_is_acknowledged_at_once():
    # git's ssh client leaves Nagle on: without the acknowledgement at once, each small
    # message after another waited for Linux's delayed ACK (up to 40 ms), a few per connection.
    from gitserver.server import _acknowledge_at_once

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    received: list[tuple[bytes, object]] = []

    class Connection:  # what asyncssh's connection offers: its socket, and data_received
        def get_extra_info(self, name: str) -> socket.socket | None:
            return server if name == "socket" else None

        def data_received(self, data: bytes, datatype: object = None) -> None:
            received.append((data, datatype))

    try:
        conn = Connection()
        _acknowledge_at_once(conn)  # type: ignore[arg-type]
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
        conn.data_received(b"SSH-2.0-test\r\n")
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
        assert received == [(b"SSH-2.0-test\r\n", None)]
    finally:
        for sock in (client, server, listener):
            sock.close()
