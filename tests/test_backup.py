"""Backup and restore (runtime/backup.py, disco backup / disco restore): one archive made while
the daemon runs, restored into a fresh data dir that a new daemon deploys from."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import threading
import time
from pathlib import Path

import pytest

from apps import BASE, new_version, shell_cmd, web_app
from conftest import DISCO, Disco, Key, make_repo, require_docker, run
from runtime.backup import BackupError, backup_due, prune_backups, restore_backup, write_backup
from runtime.store import Store


def data_dir_with_a_repo(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "repos").mkdir(parents=True)
    store = Store(data / "disco.sqlite3")
    store.add_user("alice", "admin")
    store.add_project("shop", "alice")
    store.set_env("shop", {"GREETING": "hello"})
    store.set_github_link({"project": "shop", "repo": "o/shop", "branch": "main", "clone_url": "https://x/o/shop.git",
                           "secret": "s", "token": "ghp_t0ken", "deploy_key": "", "force_mirror": 0,
                           "created_at": "now"})
    store.close()
    work = make_repo(tmp_path / "work", {"README": "hi\n"})
    run(["git", "clone", "-q", "--bare", str(work), str(data / "repos" / "shop.git")], check=True)
    (data / "repos" / "shop.git" / "objects" / "tmp_pack_abc").write_bytes(b"half a push")
    (data / "ssh_host_ed25519_key").write_text("host key")
    (data / "deployments" / "shop").mkdir(parents=True)
    (data / "deployments" / "shop" / "1.log").write_text("deployment #1\n")
    (data / "run").mkdir()
    (data / "run" / "api.sock").write_text("not a socket here")
    return data


def test_a_backup_made_while_the_store_is_written_restores_whole(tmp_path: Path):
    data = data_dir_with_a_repo(tmp_path)
    writer = Store(data / "disco.sqlite3")
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            writer.audit("alice", "busy", "shop")

    busy = threading.Thread(target=write)
    busy.start()
    try:
        made = write_backup(data, tmp_path / "out" / "backup.tar.gz")
    finally:
        stop.set()
        busy.join()
        writer.close()
    assert made.repos == 1 and oct(made.path.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(made.path) as archive:
        names = archive.getnames()
    assert "run/api.sock" not in names and not any("tmp_pack" in n for n in names)

    restored = tmp_path / "restored"
    manifest = restore_backup(made.path, restored)
    assert manifest["repos"] == ["shop.git"]
    store = Store(restored / "disco.sqlite3")
    assert store.env("shop") == {"GREETING": "hello"} and store.github_link("shop")["token"] == "ghp_t0ken"
    store.close()
    assert run(["git", "--git-dir", str(restored / "repos" / "shop.git"), "fsck", "--strict"]).returncode == 0
    assert run(["git", "--git-dir", str(restored / "repos" / "shop.git"), "rev-parse", "main"]).returncode == 0
    assert oct((restored / "ssh_host_ed25519_key").stat().st_mode & 0o777) == "0o600"
    assert (restored / "deployments" / "shop" / "1.log").read_text() == "deployment #1\n"


def hostile(tmp_path: Path, name: str, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as archive:
        manifest = json.dumps({"format": 1, "created_at": "now", "repos": []}).encode()
        info = tarfile.TarInfo("disco-backup.json")
        info.size = len(manifest)
        archive.addfile(info, io.BytesIO(manifest))
        member.size = len(data) if member.isfile() else 0
        archive.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def test_restore_refuses_what_is_not_a_clean_backup(tmp_path: Path):
    data = data_dir_with_a_repo(tmp_path)
    made = write_backup(data, tmp_path / "b.tar.gz")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something").write_text("x")
    with pytest.raises(BackupError, match="is not empty"):
        restore_backup(made.path, tmp_path / "busy")
    (tmp_path / "plain.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(BackupError, match="cannot be read as a Disco backup"):
        restore_backup(tmp_path / "plain.tar.gz", tmp_path / "r1")
    escape = tarfile.TarInfo("../escaped")
    with pytest.raises(BackupError, match="cannot be read"):
        restore_backup(hostile(tmp_path, "escape.tar.gz", escape), tmp_path / "r2")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "r2").exists()  # nothing half made
    link = tarfile.TarInfo("repos/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    with pytest.raises(BackupError, match="cannot be read"):
        restore_backup(hostile(tmp_path, "link.tar.gz", link), tmp_path / "r3")
    with pytest.raises(BackupError, match="has no disco.sqlite3"):
        write_backup(tmp_path / "nothing", tmp_path / "x.tar.gz")


def test_daily_backups_are_due_once_a_day_and_the_oldest_go(tmp_path: Path):
    folder = tmp_path / "backups"
    folder.mkdir()
    assert backup_due(folder, time.time())
    for day in range(4):
        path = folder / f"disco-backup-2026010{day}T000000Z.tar.gz"
        path.write_bytes(b"x")
        os.utime(path, (1_000_000 + day * 86400, 1_000_000 + day * 86400))
    assert not backup_due(folder, 1_000_000 + 3 * 86400 + 3600)
    assert backup_due(folder, 1_000_000 + 4 * 86400)
    gone = prune_backups(folder, keep=2)
    assert sorted(p.name for p in gone) == ["disco-backup-20260100T000000Z.tar.gz",
                                            "disco-backup-20260101T000000Z.tar.gz"]
    assert len(list(folder.iterdir())) == 2


ENV_APP = [*BASE, "COPY www /www", "EXPOSE 8000",
           shell_cmd("echo \"$GREETING\" > /www/greeting.txt; exec /bin/busybox httpd -f -p 8000 -h /www")]


def test_a_server_restored_from_its_backup_deploys_its_apps_with_their_env(disco: Disco, admin_key: Key,
                                                                          tmp_path: Path):
    require_docker()
    disco.extra_args = ["--backup-dir", str(tmp_path / "daily"), "--backup-keep", "2"]
    disco.start()
    disco.wait_for_log("backup written: ")  # the first one at start: none was made yet
    (daily,) = (tmp_path / "daily").glob("disco-backup-*.tar.gz")
    assert oct(daily.stat().st_mode & 0o777) == "0o600"
    repos = {}
    for name in ("shop", "blog"):
        repos[name] = web_app(tmp_path / name, f"{name} v1\n", ENV_APP)
        assert disco.git(admin_key, "push", disco.url(name), "main", cwd=repos[name], timeout=300).returncode == 0
        assert disco.api("POST", f"/projects/{name}/env", {"values": {"GREETING": f"hi from {name}"},
                                                           "deploy": False}).is_success
    assert disco.api("POST", "/projects/shop/domains", {"domain": "shop.example.com"}).status_code == 201
    assert disco.api("POST", "/projects/shop/github", {"repo": "o/shop", "token": "ghp_s3cret"}).status_code == 201
    assert disco.cli("users:add", "bob", "--role", "deployer").returncode == 0

    backup = tmp_path / "server.tar.gz"
    made = run([DISCO, "backup", str(backup), "--data-dir", str(disco.data_dir)])  # the daemon keeps running
    assert made.returncode == 0 and "2 repos" in made.stdout, made.stderr
    disco.stop(signal.SIGKILL)
    disco.remove_docker_objects()

    restored = Disco(data_dir=tmp_path / "restored", workdir=tmp_path / "second", api_key=disco.api_key)
    (tmp_path / "second").mkdir()
    done = run([DISCO, "restore", str(backup), "--data-dir", str(restored.data_dir)])
    assert done.returncode == 0, done.stderr
    restored.start()
    try:
        assert [u["name"] for u in restored.api("GET", "/users").json()] == ["alice", "bob"]
        assert restored.api("GET", "/projects/shop/github").json()["token_set"] is True  # secrets.key came along
        assert [d["domain"] for d in restored.api("GET", "/projects/shop/domains").json()] == ["shop.example.com"]
        new_version(repos["shop"], "shop v2\n", ENV_APP)
        pushed = restored.git(admin_key, "push", restored.url("shop"), "main", cwd=repos["shop"], timeout=300)
        assert pushed.returncode == 0, pushed.stderr
        deployed = restored.api("POST", "/projects/blog/deployments", {}).json()
        assert restored.finished_deployment("blog", deployed["number"])["status"] == "live"
        assert restored.get("shop.example.com").text == "shop v2\n"
        assert restored.get("shop.localhost", "/greeting.txt").text == "hi from shop\n"
        assert restored.get("blog.localhost").text == "blog v1\n"
        assert restored.get("blog.localhost", "/greeting.txt").text == "hi from blog\n"
    finally:
        restored.stop(signal.SIGKILL)
        restored.remove_docker_objects()
