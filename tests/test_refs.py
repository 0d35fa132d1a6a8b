"""Ref names are judged by git's rules (`git check-ref-format`) before anything else looks at them."""

from __future__ import annotations

import hashlib
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import Disco, Key, make_repo, run, server_ref, shared_disco

from hooks.pipeline import RefUpdate, check_ref_update, ref_name_problem

ZERO = "0" * 40

INVALID = {
    "refs/heads//main": "'//'",
    "refs/heads/main/": "ends with '/'",
    "/refs/heads/main": "starts with '/'",
    "refs/heads/./main": "starts with '.'",
    "refs/heads/.hidden": "starts with '.'",
    "refs/heads/main.lock": "ends with '.lock'",
    "refs/heads/main.lock/x": "ends with '.lock'",
    "refs/heads/ma..in": "'..'",
    "refs/heads/ma in": "' '",
    "refs/heads/ma\tin": "control character",
    "refs/heads/ma\x7fin": "control character",
    "refs/heads/a~1": "'~'",
    "refs/heads/a^": "'^'",
    "refs/heads/a:b": "':'",
    "refs/heads/a?": "'?'",
    "refs/heads/a*": "'*'",
    "refs/heads/a[b": "'['",
    "refs/heads/a\\b": "'\\\\'",
    "refs/heads/@": "'@'",
    "@": "'@'",
    "refs/heads/a@{b": "'@{'",
    "refs/heads/main.": "ends with '.'",
    "refs/heads/-x": "starts with '-'",
    "refs/heads/HEAD": "'HEAD'",
    "refs/heads/caf\udce9": "UTF-8",
    "main": "single level",
    "": "empty",
}

VALID = ["refs/heads/main", "refs/heads/feature/x-1", "refs/tags/v1.0", "refs/heads/a@b", "refs/heads/caf\u00e9",
         "refs/heads/a.b", "refs/heads/x-", "refs/heads/lock", "refs/notes/commits"]


@pytest.mark.parametrize(("ref", "rule"), INVALID.items())
def test_invalid_names_are_named_with_the_rule_they_break(ref: str, rule: str):
    problem = ref_name_problem(ref)
    assert problem is not None and rule in problem, problem


@pytest.mark.parametrize("ref", VALID)
def test_valid_names_pass(ref: str):
    assert ref_name_problem(ref) is None


@pytest.mark.parametrize("ref", [r for r in INVALID if r not in ("", "@", "main", "refs/heads/caf\udce9")])
def test_invalid_names_agree_with_git(ref: str):
    assert run(["git", "check-ref-format", ref]).returncode != 0 or ref in ("refs/heads/@", "refs/heads/-x",
                                                                            "refs/heads/HEAD")


@pytest.mark.parametrize("ref", VALID)
def test_valid_names_agree_with_git(ref: str):
    assert run(["git", "check-ref-format", ref]).returncode == 0


def test_check_ref_update_refuses_a_bad_name_first():
    # No platform is needed (None): the name is judged before the store or the repo is read.
    update = RefUpdate(project="myapp", ref="refs/heads//main", old_sha=ZERO, new_sha="1" * 40, user="alice")
    assert check_ref_update(None, update) == "invalid ref name 'refs/heads//main': it contains '//' (an empty component)"  # type: ignore[arg-type]


# --- the same over the wire: raw receive-pack, so that no git client normalises the names first ---


def pkt(line: bytes) -> bytes:
    return b"%04x" % (len(line) + 4) + line


def empty_pack() -> bytes:
    body = b"PACK" + struct.pack(">LL", 2, 0)
    return body + hashlib.sha1(body).digest()


def read_pkts(stream) -> list[bytes]:
    lines = []
    while True:
        size = stream.read(4)
        assert len(size) == 4, f"stream ended: {lines}"
        length = int(size, 16)
        if length == 0:
            return lines
        lines.append(stream.read(length - 4))


def raw_push(disco: Disco, key: Key, project: str, commands: list[tuple[str, str, str]]) -> list[bytes]:
    """Send `old new ref` commands byte for byte to git-receive-pack; return the status report."""
    ssh = disco.ssh_command(key, "-p", str(disco.ssh_port), "git@127.0.0.1", f"git-receive-pack '/{project}'")
    proc = subprocess.Popen(ssh, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        read_pkts(proc.stdout)  # the advertisement
        request = b""
        for i, (old, new, ref) in enumerate(commands):
            line = f"{old} {new} ".encode() + ref.encode(errors="surrogateescape")
            request += pkt(line + (b"\0report-status" if i == 0 else b"") + b"\n")
        request += b"0000"
        if any(new != ZERO for _, new, _ in commands):
            request += empty_pack()
        proc.stdin.write(request)
        proc.stdin.flush()
        report = read_pkts(proc.stdout)
        proc.stdin.close()
        proc.wait(timeout=30)
        return report
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One daemon for the module's pushes (each test uses its own project)."""
    yield from shared_disco(tmp_path_factory.mktemp("refs"))


def test_raw_pushes_of_bad_names_are_refused_and_the_deploy_branch_stays(shared, tmp_path: Path):
    disco, key = shared
    repo = make_repo(tmp_path / "app", branch="dev")
    assert disco.git(key, "push", disco.url("refsapp"), "dev", cwd=repo).returncode == 0
    dev = server_ref(disco, "refsapp", "refs/heads/dev")
    assert dev is not None
    # What is live, as far as these tests go: main names a commit (set on disk, no deploy needed).
    live = run(["git", "--git-dir", str(disco.repo_dir("refsapp")), "commit-tree", "-m", "live",
                f"{dev}^{{tree}}"], check=True).stdout.strip()
    run(["git", "--git-dir", str(disco.repo_dir("refsapp")), "update-ref", "refs/heads/main", live], check=True)

    bad = ["refs/heads//main", "refs/heads/main/", "refs/heads/./main", "refs/heads/main.lock",
           "refs/heads/ma..in", "refs/heads/@", "refs/heads/a@{b", "refs/heads/main.", "refs/heads/caf\udce9"]
    report = raw_push(disco, key, "refsapp", [(live, dev, ref) for ref in bad])
    assert report[0] == b"unpack ok\n"
    for ref, line in zip(bad, report[1:], strict=True):
        assert line.startswith(b"ng " + ref.encode(errors="surrogateescape") + b" invalid ref name "), line
    assert b"ng refs/heads//main invalid ref name 'refs/heads//main': it contains '//'" in report[1]
    assert server_ref(disco, "refsapp") == live

    # Deleting the deploy branch under another spelling is refused too.
    report = raw_push(disco, key, "refsapp", [(live, ZERO, "refs/heads//main"), (live, ZERO, "refs/heads/main/")])
    assert all(line.startswith(b"ng refs/heads/") and b"invalid ref name" in line for line in report[1:]), report
    assert server_ref(disco, "refsapp") == live
    assert server_ref(disco, "refsapp", "refs/heads/dev") == dev
    fsck = run(["git", "--git-dir", str(disco.repo_dir("refsapp")), "fsck"])
    assert fsck.returncode == 0, fsck.stderr
