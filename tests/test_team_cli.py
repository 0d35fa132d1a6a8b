"""The team commands of `disco` on a local data dir: users, grants, SSH keys, init."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import Disco, run


def audit_actions(disco: Disco) -> list[tuple[str, str]]:
    with sqlite3.connect(disco.data_dir / "disco.sqlite3") as conn:
        return conn.execute("SELECT action, target FROM audit ORDER BY id").fetchall()


def test_users_add_list_grant_revoke_remove(disco: Disco):
    assert disco.cli("users:add", "ann", "--role", "admin").returncode == 0
    assert disco.cli("users:add", "bob", "--role", "deployer").returncode == 0
    assert disco.cli("users:grant", "bob", "shop").returncode == 0
    assert disco.cli("users:grant", "bob", "blog").returncode == 0
    listed = json.loads(disco.cli("users:list", "--json").stdout)
    assert [(u["name"], u["role"], u["projects"]) for u in listed] == [
        ("alice", "admin", []), ("ann", "admin", []), ("bob", "deployer", ["blog", "shop"])
    ]
    table = disco.cli("users:list").stdout.splitlines()
    assert table[0].split() == ["NAME", "ROLE", "PROJECTS", "CREATED"]
    assert table[3].split()[:3] == ["bob", "deployer", "blog,shop"]

    assert disco.cli("users:revoke", "bob", "shop").returncode == 0
    again = disco.cli("users:revoke", "bob", "shop")
    assert again.returncode == 1 and "has no grant on project 'shop'" in again.stderr
    assert disco.cli("users:remove", "bob").returncode == 0
    assert [u["name"] for u in json.loads(disco.cli("users:list", "--json").stdout)] == ["alice", "ann"]
    assert ("users:grant", "bob") in audit_actions(disco) and ("users:remove", "bob") in audit_actions(disco)


def test_user_errors_are_clear(disco: Disco):
    assert disco.cli("users:add", "ann", "--role", "admin").returncode == 0
    duplicate = disco.cli("users:add", "ann", "--role", "admin")
    assert duplicate.returncode == 1 and "user 'ann' already exists" in duplicate.stderr
    bad_role = disco.cli("users:add", "zed", "--role", "owner")
    assert bad_role.returncode != 0 and "invalid choice: 'owner'" in bad_role.stderr
    bad_name = disco.cli("users:add", "Robert'); DROP TABLE users;--", "--role", "admin")
    assert bad_name.returncode == 1 and "invalid user name" in bad_name.stderr
    unknown = disco.cli("users:grant", "nobody", "shop")
    assert unknown.returncode == 1 and "no user named 'nobody'" in unknown.stderr
    bad_project = disco.cli("users:grant", "ann", "../etc")
    assert bad_project.returncode == 1 and "invalid project name" in bad_project.stderr
    assert disco.cli("users:remove", "ann").returncode == 0
    last_admin = disco.cli("users:remove", "alice")
    assert last_admin.returncode == 1 and "last admin" in last_admin.stderr
    assert [u["name"] for u in json.loads(disco.cli("users:list", "--json").stdout)] == ["alice"]


def test_keys_add_list_remove_with_ssh_keygen_fingerprints(disco: Disco, make_key):
    assert disco.cli("users:add", "ann", "--role", "admin").returncode == 0
    ed, rsa, ecdsa = make_key("ed"), make_key("rsa", "rsa"), make_key("ec", "ecdsa")
    assert disco.cli("keys:add", "ann", str(ed.public)).returncode == 0
    assert disco.cli("keys:add", "ann", str(rsa.public)).returncode == 0
    assert disco.cli("keys:add", "ann", "-", input=ecdsa.public.read_text()).returncode == 0

    listed = json.loads(disco.cli("keys:list", "--json").stdout)
    assert {k["fingerprint"] for k in listed} == {ed.fingerprint, rsa.fingerprint, ecdsa.fingerprint}
    assert {k["type"] for k in listed} == {"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"}
    assert all(k["user"] == "ann" and k["added_at"] for k in listed)
    assert {k["comment"] for k in listed} == {"ed@test", "rsa@test", "ec@test"}
    assert ed.fingerprint in disco.cli("keys:list").stdout

    removed = disco.cli("keys:remove", rsa.fingerprint)
    assert removed.returncode == 0
    assert len(json.loads(disco.cli("keys:list", "--json").stdout)) == 2
    missing = disco.cli("keys:remove", rsa.fingerprint)
    assert missing.returncode == 1 and f"no SSH key with fingerprint {rsa.fingerprint}" in missing.stderr


def test_duplicate_key_names_its_owner(disco: Disco, make_key):
    key = make_key("shared")
    for name in ("ann", "bob"):
        assert disco.cli("users:add", name, "--role", "deployer").returncode == 0
    assert disco.cli("keys:add", "ann", str(key.public)).returncode == 0
    again = disco.cli("keys:add", "bob", str(key.public))
    assert again.returncode == 1
    assert f"key {key.fingerprint} is already registered to user 'ann'" in again.stderr


def test_malformed_keys_are_rejected_and_nothing_is_stored(disco: Disco, make_key, tmp_path: Path):
    assert disco.cli("users:add", "ann", "--role", "admin").returncode == 0
    good = make_key("good").public.read_text().split()
    cases = {
        "": "empty input",
        "hello world": "unsupported key type 'hello'",
        "ssh-ed25519": "no key data",
        "ssh-ed25519 not*base64": "not a valid ssh-ed25519 public key",
        f"ssh-rsa {good[1]}": "not a valid ssh-rsa public key: Public key algorithm mismatch",
        f"ssh-ed25519 {good[1][:-8]}": "not a valid ssh-ed25519 public key",
        f"{' '.join(good)}\n{' '.join(good)}": "exactly one public key line",
        make_key("private").path.read_text(): "this is a private key: give the public half",
    }
    for text, message in cases.items():
        result = disco.cli("keys:add", "ann", "-", input=text)
        assert result.returncode == 1, text
        assert message in result.stderr, (text, result.stderr)
    assert json.loads(disco.cli("keys:list", "--json").stdout) == []
    missing = disco.cli("keys:add", "ann", str(tmp_path / "nope.pub"))
    assert missing.returncode == 1 and "cannot read key file" in missing.stderr
    nobody = disco.cli("keys:add", "nobody", str(make_key("x").public))
    assert nobody.returncode == 1 and "no user named 'nobody'" in nobody.stderr


def test_init_creates_layout_and_first_admin_once(tmp_path: Path, make_key):
    key = make_key("first")
    data = tmp_path / "fresh"
    server = Disco(data_dir=data, workdir=tmp_path)
    result = server.cli("init", "--admin", "root-admin", "--key", str(key.public))
    assert result.returncode == 0, result.stderr
    assert {p.name for p in data.iterdir()} >= {
        "disco.sqlite3", "config.toml", "ssh_host_ed25519_key", "repos", "deployments", "run"
    }
    assert (data / "ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600
    host_key = (data / "ssh_host_ed25519_key").read_bytes()
    config = (data / "config.toml").read_text()
    assert "# port of the git-over-SSH server" in config and "ssh_port = 2222" in config

    (data / "config.toml").write_text(config.replace("ssh_port = 2222", "ssh_port = 2200"))
    again = server.cli("init")
    assert again.returncode == 0
    assert (data / "ssh_host_ed25519_key").read_bytes() == host_key
    assert "ssh_port = 2200" in (data / "config.toml").read_text()  # hand edits are kept
    users = json.loads(server.cli("users:list", "--json").stdout)
    assert [(u["name"], u["role"]) for u in users] == [("root-admin", "admin")]
    assert result.stdout.count("disco_") == 1 and "disco_" not in again.stdout  # the API key, once
    keys = json.loads(server.cli("keys:list", "--json").stdout)
    assert [k["fingerprint"] for k in keys] == [key.fingerprint]


def test_team_commands_need_a_data_dir_or_a_login(tmp_path: Path):
    from conftest import DISCO
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = run([DISCO, "users:list"], env=env)
    assert result.returncode == 1 and "not logged in: run `disco login URL`" in result.stderr
    result = run([DISCO, "users:list", "--data-dir", str(tmp_path / "empty")], env=env)
    assert result.returncode == 1 and "is not a Disco data dir" in result.stderr
    assert not (tmp_path / "empty").exists()
    via_env = run([DISCO, "users:list"], env={**env, "DISCO_DATA_DIR": str(tmp_path / "empty")})
    assert "is not a Disco data dir" in via_env.stderr


def test_every_command_has_help():
    from conftest import DISCO
    commands = ["serve", "init", "users:add", "users:list", "users:remove", "users:grant", "users:revoke",
                "keys:add", "keys:list", "keys:remove"]
    top = run([DISCO, "--help"])
    for name in commands:
        assert name in top.stdout
        assert run([DISCO, name, "--help"]).returncode == 0
