"""SSH cannot be exhausted by one user: a cap on git sessions per user, and an idle timeout."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from apps import BASE, SERVE, web_app
from conftest import (
    Disco,
    Key,
    head,
    make_repo,
    require_docker,
    server_ref,
    shared_disco,
)

CAP = 8
IDLE = 3


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """Default idle timeout (sessions stay open for the test), the default cap said explicitly."""
    yield from shared_disco(tmp_path_factory.mktemp("capped"), ["--max-ssh-sessions", str(CAP)], users=("bob",))


@pytest.fixture(scope="module")
def impatient(tmp_path_factory):
    yield from shared_disco(tmp_path_factory.mktemp("impatient"), ["--ssh-idle-timeout", str(IDLE)])


def idle_session(disco: Disco, key: Key, project: str, service: str = "git-receive-pack") -> subprocess.Popen:
    """An SSH git session whose client never sends a byte."""
    command = disco.ssh_command(key, "-p", str(disco.ssh_port), "git@127.0.0.1", f"{service} '/{project}'")
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def close(sessions: list[subprocess.Popen]) -> None:
    for proc in sessions:
        if proc.poll() is None:
            proc.kill()
    for proc in sessions:
        proc.communicate(timeout=30)


def test_one_user_holding_sessions_cannot_starve_another(capped, tmp_path: Path):
    disco, keys = capped
    repo = make_repo(tmp_path / "app", branch="dev")
    assert disco.git(keys["alice"], "push", disco.url("shared"), "dev", cwd=repo).returncode == 0

    sessions = [idle_session(disco, keys["bob"], "shared") for _ in range(60)]
    try:
        # All but the cap are refused at once; the cap's worth stay open, waiting for bob.
        wait_until(lambda: sum(p.poll() is not None for p in sessions) >= 60 - CAP, 60,
                   "the sessions over the cap were not refused")
        refused = [p for p in sessions if p.poll() is not None]
        holding = [p for p in sessions if p.poll() is None]
        assert len(refused) == 60 - CAP and len(holding) == CAP
        for proc in refused:
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == 1
            assert f"disco: too many git sessions open for bob ({CAP}); close some and retry" in err.decode(), err
        for proc in holding:  # really open: each got receive-pack's advertisement
            assert proc.stdout is not None and len(proc.stdout.read(4)) == 4

        started = time.monotonic()
        listing = disco.git(keys["alice"], "ls-remote", disco.url("shared"), timeout=30)
        assert listing.returncode == 0, listing.stderr
        assert head(repo) in listing.stdout
        assert time.monotonic() - started < 5
        # A push of alice's goes through too.
        assert disco.git(keys["alice"], "push", disco.url("other"), "dev", cwd=repo, timeout=30).returncode == 0

        ninth = disco.git(keys["bob"], "ls-remote", disco.url("shared"), timeout=30)
        assert ninth.returncode != 0
        assert f"too many git sessions open for bob ({CAP})" in ninth.stderr
    finally:
        close(sessions)
    # Closed sessions give their places back.
    wait_until(lambda: disco.git(keys["bob"], "ls-remote", disco.url("shared")).returncode == 0, 30,
               "bob's closed sessions were still counted")


def test_an_idle_session_is_closed_after_the_timeout(impatient, tmp_path: Path):
    disco, key = impatient
    repo = make_repo(tmp_path / "app", branch="dev")
    assert disco.git(key, "push", disco.url("idler"), "dev", cwd=repo).returncode == 0
    for service in ("git-receive-pack", "git-upload-pack"):
        started = time.monotonic()
        proc = idle_session(disco, key, "idler", service)
        try:
            proc.wait(timeout=IDLE + 20)  # stdin stays open: communicate() would close it, an EOF
            assert proc.stderr is not None
            err = proc.stderr.read()
        finally:
            close([proc])
        took = time.monotonic() - started
        assert proc.returncode == 1
        assert f"disco: closed: the client sent nothing for {IDLE} s" in err.decode(), err
        assert IDLE - 0.5 <= took < IDLE + 15, took
    disco.wait_for_log(f"session of alice closed: the client sent nothing for {IDLE} s")
    assert server_ref(disco, "idler", "refs/heads/dev") == head(repo)
    # A session that keeps talking is not idle, however long it lasts in total: a clone through
    # the slow path still works (each read comes well within the timeout).
    clone = disco.git(key, "clone", "-q", "-b", "dev", disco.url("idler"), str(tmp_path / "clone"))
    assert clone.returncode == 0, clone.stderr


def test_a_push_waiting_for_its_deployment_is_not_idle(impatient, tmp_path: Path):
    require_docker()
    disco, key = impatient
    # The build alone takes longer than the idle timeout, and the client sends nothing meanwhile.
    # (A fresh token each run: BuildKit would otherwise reuse the cached step, and take no time.)
    dockerfile = [*BASE, f"RUN /bin/busybox sleep {IDLE * 2} && echo {uuid.uuid4().hex}", "COPY www /www",
                  "EXPOSE 8000", SERVE]
    repo = web_app(tmp_path / "app", dockerfile=dockerfile)
    started = time.monotonic()
    result = disco.git(key, "push", disco.url("slowbuild"), "main", cwd=repo, timeout=300)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started > IDLE * 2
    assert "closed:" not in result.stderr
    assert server_ref(disco, "slowbuild") == head(repo)


def test_pushes_are_encrypted_with_aes_not_asyncssh_s_chacha20(capped, tmp_path: Path):
    """gitserver/server.py ENCRYPTION_ALGS: chacha20-poly1305 runs in Python in asyncssh and cost a
    push most of its gap to a local one. OpenSSH's own first choice is refused by name, and
    OpenSSH left to its defaults agrees on AES and pushes."""
    disco, keys = capped
    greeting = ["-p", str(disco.ssh_port), "git@127.0.0.1"]
    chacha = subprocess.run([*disco.ssh_command(keys["alice"], "-c", "chacha20-poly1305@openssh.com", *greeting), "-v"],
                            capture_output=True, text=True, timeout=30)  # -v: past the command's LogLevel=ERROR
    assert chacha.returncode == 255 and "no matching cipher found" in chacha.stderr, chacha.stderr
    verbose = subprocess.run([*disco.ssh_command(keys["alice"], *greeting), "-v"], capture_output=True, text=True,
                             timeout=30)
    assert re.search(r"server->client cipher: aes(128|192|256)-(ctr|gcm)", verbose.stderr), verbose.stderr
    assert "Hi alice!" in verbose.stdout + verbose.stderr
    repo = make_repo(tmp_path / "app", branch="dev")
    assert disco.git(keys["alice"], "push", disco.url("aes"), "dev", cwd=repo).returncode == 0
