"""A full disk (issue 16): the data dir on a small tmpfs made here, a push that does not fit,
the store and the deployment log when there is no room, and the 90% warnings."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from apps import new_version, web_app
from conftest import DISCO, Disco, Key, commit, make_repo, require_docker, run, server_ref, shared_disco, wait_for

from hooks.output import DeployOutput
from runtime import disk
from runtime.disk import Crossings, DiskUsage, report, warning
from runtime.store import Store, StoreFull

MiB = 1 << 20
DISK_SIZE = 48 * MiB


# -- the 90% rule, as data -------------------------------------------------------------------

def usage_of(used_percent: float, total: int = 100 * MiB, path: str = "/x") -> DiskUsage:
    return DiskUsage(path, total, total - int(total * used_percent / 100))


@pytest.mark.parametrize(("percent", "warns"), [(0, False), (50, False), (90, False), (90.1, True), (100, True)])
def test_a_disk_warns_only_above_90_percent(percent: float, warns: bool):
    said = warning("the data dir's disk", usage_of(percent))
    assert (said is not None) == warns
    if said:
        assert said.startswith(f"the data dir's disk (/x) is {percent:g}% full, ")


def test_used_percent_is_what_df_shows_and_an_empty_filesystem_is_not_full():
    assert usage_of(75).used_percent == 75.0
    assert DiskUsage("/x", 0, 0).used_percent == 0.0
    assert DiskUsage("/x", 3 * MiB, 1 * MiB).as_json() == {
        "path": "/x", "used_percent": 66.7, "free_bytes": MiB, "total_bytes": 3 * MiB}


def test_a_report_names_each_disk_and_says_why_one_is_unknown(tmp_path: Path):
    found = report({"data_dir": tmp_path, "docker": "", "gone": tmp_path / "missing"}).as_json()
    assert found["data_dir"]["path"] == str(tmp_path) and found["data_dir"]["free_bytes"] > 0
    assert found["docker"] == {"error": "unknown"}
    assert found["gone"]["error"].startswith(f"cannot read {tmp_path / 'missing'}: ")
    assert found["warn_percent"] == 90.0


def test_each_crossing_of_the_line_is_told_once():
    crossings = Crossings()
    full = disk.DiskReport({"data_dir": usage_of(95), "docker": usage_of(10)})
    said = crossings.look(full)  # at start: what is over now
    assert [level for level, _ in said] == ["warning"] and "the data dir's disk" in said[0][1]
    assert crossings.look(full) == []  # still over: said already
    unknown = disk.DiskReport({"data_dir": "cannot read it", "docker": usage_of(10)})
    assert crossings.look(unknown) == []  # not knowing is not coming back under
    assert crossings.look(full) == []
    assert crossings.look(disk.DiskReport({"data_dir": usage_of(50), "docker": usage_of(99)})) == [
        ("warning", warning("Docker's disk", usage_of(99))),
        ("info", "the data dir's disk is 90% full or less again")]


def test_what_counts_as_a_full_disk():
    assert disk.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert disk.is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert disk.is_disk_full(StoreFull("no space left on the server: the store could not be written"))
    assert not disk.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk.is_disk_full(sqlite3.OperationalError("database is locked"))
    assert not disk.is_disk_full(ValueError("disk is full"))


# -- a small filesystem of our own ---------------------------------------------------------------

def mount_tmpfs(path: Path, size: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)])
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {result.stderr.strip()}")


def unmount(path: Path) -> None:
    if run(["umount", str(path)]).returncode != 0:
        run(["umount", "-l", str(path)])  # something still holds it open: detach it anyway


def free(path: Path) -> int:
    return disk.usage(path).free_bytes


def fill(path: Path, leave: int = 0) -> Path:
    """A filler file on `path`'s filesystem, leaving about `leave` bytes free (0: none at all)."""
    filler = path / f"filler-{len(list(path.glob('filler-*')))}"
    with filler.open("wb") as f:
        while (room := free(path) - leave) > 0:
            try:
                f.write(os.urandom(min(room, MiB)))
                f.flush()
            except OSError as err:
                assert err.errno == errno.ENOSPC
                break
    return filler


@pytest.fixture
def small(tmp_path: Path):
    mount_tmpfs(tmp_path / "small", 8 * MiB)
    try:
        yield tmp_path / "small"
    finally:
        unmount(tmp_path / "small")


def test_the_deployment_log_on_a_full_disk_stops_but_its_lines_still_reach_the_listener(small: Path):
    fill(small)
    heard: list[str] = []
    output = DeployOutput(small / "deployments" / "shop" / "1.log")
    output.subscribe(heard.append)
    for n in range(2000):  # more than a page: the write itself must fail, not only its buffer
        output.line(f"step {n} " + "x" * 60)
    output.close()
    assert heard[:1] == ["step 0 " + "x" * 60] and heard[-1] == "step 1999 " + "x" * 60
    warnings = [line for line in heard if line.startswith("warning:")]
    assert warnings == ["warning: no space left on the server: the deployment log could not be written; "
                        "the output goes on here only"]
    assert output.log_error and "no space left on the server" in output.log_error


def test_a_store_on_a_full_disk_refuses_writes_clearly_stays_whole_and_works_once_there_is_room(small: Path):
    store = Store(small / "disco.sqlite3")
    assert store.reserve.keep()
    store.add_user("alice", "admin")
    filler = fill(small)
    with pytest.raises(StoreFull, match=r"^no space left on the server: the store could not be written"):
        for n in range(10_000):
            store.audit("alice", "push", f"p{n}", "x" * 500)
    # The reserve went, so what records the failure still fits; the connection is not wedged.
    assert not store.reserve.path.exists()
    store.audit("alice", "deploy failed", "p", "no space left on the server")
    assert [row[0] for row in sqlite3.connect(small / "disco.sqlite3").execute("PRAGMA integrity_check")] == ["ok"]
    filler.unlink()
    assert store.reserve.keep() and store.reserve.path.stat().st_size == disk.RESERVE_SIZE
    store.add_user("bob", "deployer")
    assert store.get_user("bob") is not None
    store.close()


# -- the daemon on a small disk --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory):
    """A daemon whose data dir is a 48 MiB tmpfs (the workdir, with its log, is not on it)."""
    require_docker()
    workdir = tmp_path_factory.mktemp("disk")
    mount_tmpfs(workdir / "data", DISK_SIZE)
    try:
        yield from shared_disco(workdir)
    finally:
        unmount(workdir / "data")


@pytest.fixture
def fillers(tight):
    """Filler files made by a test go at its end, whatever happened."""
    made: list[Path] = []
    yield made
    for path in made:
        path.unlink(missing_ok=True)


def push(disco: Disco, key: Key, repo: Path, ref: str = "main") -> subprocess.CompletedProcess:
    return disco.git(key, "push", disco.url("myapp"), ref, cwd=repo, timeout=300)


def leftovers(repo: Path) -> list[str]:
    """What a refused push must not leave: temporary packs, and packs without their index."""
    objects = repo / "objects"
    found = [p.name for p in objects.glob("tmp_pack_*")] + [p.name for p in (objects / "pack").glob("tmp_*")]
    return found + [p.name for p in (objects / "pack").glob("*.pack") if not p.with_suffix(".idx").exists()]


def store_is_whole(disco: Disco) -> bool:
    with sqlite3.connect(disco.data_dir / "disco.sqlite3") as conn:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")] == ["ok"]


def fsck(repo: Path) -> subprocess.CompletedProcess:
    return run(["git", "--git-dir", str(repo), "fsck", "--full", "--strict", "--no-dangling"])


def test_the_daemon_warns_at_start_and_when_the_data_dir_goes_above_90_percent(tight, fillers, tmp_path: Path):
    disco, _ = tight
    meta = disco.api("GET", "/meta").json()
    assert meta["disk"]["data_dir"]["path"] == str(disco.data_dir) and meta["disk"]["warnings"] == []
    assert (disco.data_dir / disk.RESERVE_NAME).stat().st_size == disk.RESERVE_SIZE  # kept from the start
    assert meta["disk"]["docker"]["path"]  # Docker's data root, from `docker info`
    fillers.append(fill(disco.data_dir, leave=2 * MiB))  # 46 of 48 MiB: 95%
    disk_now = wait_for("the warning in /meta (its state is kept for a second)",
                        lambda: (m := disco.api("GET", "/meta").json()["disk"])["warnings"] and m)
    assert [w.split(" (")[0] for w in disk_now["warnings"]] == ["the data dir's disk"]
    assert disk_now["data_dir"]["used_percent"] > 90
    disco.wait_for_log(f"warning: the data dir's disk ({disco.data_dir}) is ")  # crossed, told by /meta
    disco.stop()
    disco.start()
    disco.wait_for_log(f"warning: the data dir's disk ({disco.data_dir}) is ")  # at start, by the watch
    # `disco login` reads /meta, and says so too.
    home = tmp_path / "laptop"
    home.mkdir()
    login = run([DISCO, "login", f"http://127.0.0.1:{disco.api_port}"], input=disco.api_key + "\n", cwd=home,
                env={**os.environ, "XDG_CONFIG_HOME": str(home / "xdg"), "HOME": str(home)})
    assert login.returncode == 0 and "warning: the data dir's disk (" in login.stderr, login.stderr
    fillers.pop().unlink()
    wait_for("no warning in /meta", lambda: disco.api("GET", "/meta").json()["disk"]["warnings"] == [])
    disco.wait_for_log("the data dir's disk is 90% full or less again")


def test_a_push_that_does_not_fit_is_refused_before_the_ref_moves_and_fits_once_there_is_room(
        tight, fillers, tmp_path: Path):
    disco, key = tight
    repo = web_app(tmp_path / "app")
    assert push(disco, key, repo).returncode == 0
    live = server_ref(disco, "myapp")
    bare = disco.repo_dir("myapp")
    big = new_version(repo, "v2\n", **{"big.bin": os.urandom(12 * MiB)})  # random: no compression helps
    fillers.append(fill(disco.data_dir, leave=6 * MiB))
    free_before = free(disco.data_dir)

    refused = push(disco, key, repo)

    said = refused.stdout + refused.stderr

    assert refused.returncode != 0
    assert "no space left on the server: the push did not fit" in said, said
    assert "Traceback" not in said and "internal error" not in said
    assert server_ref(disco, "myapp") == live
    assert leftovers(bare) == []
    # The half-written pack is gone: the space came back (the daemon's own log lines aside).
    assert free(disco.data_dir) > free_before - 512 * 1024
    checked = fsck(bare)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    assert store_is_whole(disco)
    assert disco.process is not None and disco.process.poll() is None
    assert disco.api("GET", "/meta").status_code == 200

    fillers.pop().unlink()
    again = push(disco, key, repo)
    assert again.returncode == 0, again.stderr
    assert server_ref(disco, "myapp") == big
    assert disco.api("GET", "/projects/myapp").json()["live_deployment"]["number"] == 2
    assert fsck(bare).returncode == 0 and store_is_whole(disco)


def test_a_push_is_refused_while_the_data_dir_has_no_room_left_besides_its_objects(tight, fillers, tmp_path: Path):
    disco, key = tight
    repo = make_repo(tmp_path / "small-change")
    first = commit(repo, {"NOTES": "a few bytes\n"}, "notes")
    fillers.append(fill(disco.data_dir, leave=256 * 1024))

    refused = disco.git(key, "push", disco.url("myapp"), f"{first}:refs/heads/notes", cwd=repo)

    assert refused.returncode != 0
    assert "(no space left on the server: a push needs 1 MiB free besides its objects" in refused.stderr, \
        refused.stderr
    assert server_ref(disco, "myapp", "refs/heads/notes") is None
    assert store_is_whole(disco)
    fillers.pop().unlink()
    stored = disco.git(key, "push", disco.url("myapp"), f"{first}:refs/heads/notes", cwd=repo)
    assert stored.returncode == 0, stored.stderr
    assert server_ref(disco, "myapp", "refs/heads/notes") == first


def pack_bytes(tmp_path: Path, size: int) -> bytes:
    """A pack of one commit holding `size` random bytes, as `git push` would send it."""
    repo = make_repo(tmp_path / "packed", {"blob.bin": os.urandom(size)})
    listed = run(["git", "rev-list", "--objects", "HEAD"], cwd=repo, check=True).stdout
    return subprocess.run(["git", "pack-objects", "--stdout", "-q"], cwd=repo, check=True, capture_output=True,
                          input=listed.encode()).stdout


@pytest.mark.parametrize("room", ["none", "the pack but not its index"])
def test_a_pack_that_does_not_fit_leaves_nothing_behind(small: Path, tmp_path: Path, room: str):
    import io

    from dulwich.repo import Repo

    from gitserver.gitproto import PushLimits, add_limited_thin_pack

    bare = Repo.init_bare(str(small / "app.git"), mkdir=True)
    pack = pack_bytes(tmp_path, 2 * MiB)
    page = os.sysconf("SC_PAGE_SIZE")
    filler = fill(small)
    if room != "none":  # exactly the pages the pack takes: its index is the write that fails
        os.truncate(filler, filler.stat().st_size - -(-len(pack) // page) * page)
    free_before = free(small)
    stream = io.BytesIO(pack)
    limits = PushLimits(max_input_size=1 << 30, max_object_size=1 << 30, max_inflated_size=1 << 30)
    with pytest.raises(OSError) as raised:
        add_limited_thin_pack(bare.object_store, stream.read, limits)  # type: ignore[arg-type]
    assert raised.value.errno == errno.ENOSPC
    assert leftovers(small / "app.git") == [] and list((small / "app.git" / "objects" / "pack").iterdir()) == []
    assert free(small) == free_before


def test_a_ref_that_cannot_be_written_for_lack_of_space_is_not_left_locked(small: Path, tmp_path: Path):
    from dulwich.repo import Repo

    from gitserver.gitproto import _no_lock_left_on_a_full_disk

    work = make_repo(tmp_path / "work")
    sha = run(["git", "rev-parse", "HEAD"], cwd=work, check=True).stdout.strip().encode()
    run(["git", "clone", "-q", "--bare", str(work), str(small / "app.git")], check=True)
    run(["git", "--git-dir", str(small / "app.git"), "update-ref", "-d", "refs/heads/main"], check=True)
    bare = Repo(str(small / "app.git"))
    filler = fill(small)
    with pytest.raises(OSError) as raised, _no_lock_left_on_a_full_disk(bare.path, "refs/heads/main"):
        bare.refs.set_if_equals(b"refs/heads/main", None, sha)  # type: ignore[arg-type]
    assert raised.value.errno == errno.ENOSPC
    assert list((small / "app.git" / "refs" / "heads").iterdir()) == []  # dulwich alone leaves main.lock
    filler.unlink()
    assert bare.refs.set_if_equals(b"refs/heads/main", None, sha)  # type: ignore[arg-type]
    assert bare.refs[b"refs/heads/main"] == sha
