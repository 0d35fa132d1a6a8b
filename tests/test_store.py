"""The state store: schema migrations, WAL, thread safety, all-or-nothing changes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlite_utils

from runtime import store as store_module
from runtime.store import MIGRATIONS, SSHKey, Store, StoreError, now

ROOT = Path(__file__).resolve().parent.parent


def test_fresh_store_is_wal_and_at_the_latest_schema(tmp_path: Path):
    store = Store(tmp_path / "disco.sqlite3")
    assert store.schema_version == len(MIGRATIONS)
    mode = sqlite3.connect(tmp_path / "disco.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert {"users", "grants", "ssh_keys", "projects", "audit"} <= set(sqlite_utils.Database(store.path).table_names())


def test_opening_a_store_at_the_latest_schema_does_not_load_sqlite_utils(tmp_path: Path):
    """sqlite-utils only runs migrations (about 10 MB of an idle daemon, issue 15)."""
    Store(tmp_path / "disco.sqlite3").close()  # a fresh store: its migrations ran here
    opened = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from runtime.store import Store; "
         f"s = Store(Path({str(tmp_path / 'disco.sqlite3')!r})); s.add_user('ann', 'admin'); "
         "print(s.get_user('ann').role, 'sqlite_utils' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert opened == ["admin", "False"]


def test_new_migrations_apply_on_open_without_losing_data(tmp_path: Path, monkeypatch):
    path = tmp_path / "disco.sqlite3"
    old = Store(path)
    old.add_user("ann", "admin")
    old.audit("ann", "users:add", "ann")
    old.close()

    def add_column(db, box):
        db["users"].add_column("email", str)

    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, add_column])
    upgraded = Store(path)
    assert upgraded.schema_version == len(MIGRATIONS) + 1
    assert "email" in sqlite_utils.Database(path)["users"].columns_dict
    assert upgraded.get_user("ann").role == "admin"
    assert len(upgraded.audit_log()) == 1
    upgraded.close()
    # Opening again applies nothing twice.
    assert Store(path).schema_version == len(MIGRATIONS) + 1


def test_failed_migration_changes_nothing(tmp_path: Path, monkeypatch):
    path = tmp_path / "disco.sqlite3"
    Store(path).close()

    def broken(db, box):
        db["users"].add_column("half_done", str)
        raise RuntimeError("boom")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(RuntimeError):
        Store(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert "half_done" not in [row[1] for row in conn.execute("PRAGMA table_info(users)")]


def test_threads_share_one_store(tmp_path: Path):
    store = Store(tmp_path / "disco.sqlite3")
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for j in range(20):
                store.add_user(f"u{index}-{j}", "deployer")
                store.grant(f"u{index}-{j}", "shop")
                assert store.has_grant(f"u{index}-{j}", "shop")
        except BaseException as err:  # collected and re-raised on the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.list_users()) == 160


def test_second_process_sees_writes(tmp_path: Path):
    path = tmp_path / "disco.sqlite3"
    daemon_side = Store(path)
    shell_side = Store(path)
    shell_side.add_user("ann", "admin")
    assert daemon_side.get_user("ann") is not None


def test_removing_a_user_removes_keys_and_grants(tmp_path: Path):
    store = Store(tmp_path / "disco.sqlite3")
    store.add_user("bob", "deployer")
    store.grant("bob", "shop")
    store.add_ssh_key(SSHKey("SHA256:x", "bob", "ssh-ed25519", "ssh-ed25519 AAAA", "", now()))
    store.remove_user("bob")
    assert store.user_for_key("SHA256:x") is None
    assert not store.has_grant("bob", "shop")
    with pytest.raises(StoreError, match="no user named 'bob'"):
        store.remove_user("bob")


def test_link_secrets_are_sealed_at_rest_and_an_old_store_is_sealed_by_its_migration(tmp_path: Path):
    path = tmp_path / "disco.sqlite3"
    old = Store(path)
    old.migrate()
    old.close()
    # A store from before secrets were sealed: its link holds them in clear.
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=6")
    conn.execute("ALTER TABLE github_links DROP COLUMN installation_id")
    for column in ("images", "static_site"):  # from migration 8
        conn.execute(f"ALTER TABLE deployments DROP COLUMN {column}")
    for table in ("github_app", "github_installations", "github_installation_repos", "github_app_flows"):
        conn.execute(f"DROP TABLE {table}")
    for (trigger,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {trigger}")  # from migration 9, with its table
    conn.execute("DROP TABLE changes")
    for table in ("sessions", "sign_in_links"):  # from migration 10
        conn.execute(f"DROP TABLE {table}")
    conn.execute("INSERT INTO github_links (project, repo, branch, clone_url, secret, token, deploy_key, force_mirror, "
                 "created_at) VALUES ('shop', 'o/shop', 'main', 'https://github.com/o/shop.git', 'hook-s3cret', "
                 "'ghp_l1nkt0ken', '-----BEGIN OPENSSH PRIVATE KEY-----', 0, 'now')")
    conn.commit()
    conn.close()
    upgraded = Store(path)
    link = upgraded.github_link("shop")
    assert link is not None and (link["token"], link["secret"]) == ("ghp_l1nkt0ken", "hook-s3cret")
    assert link["deploy_key"].startswith("-----BEGIN") and link["installation_id"] == 0
    upgraded.add_github_app({"app_id": 7, "slug": "disco-x", "name": "disco x", "owner": "o", "html_url": "h",
                             "client_id": "Iv1.x", "client_secret": "cl1ent-s3cret", "webhook_secret": "app-h00k",
                             "pem": "-----BEGIN RSA PRIVATE KEY-----k3y", "created_by": "ann", "created_at": "now"})
    assert upgraded.github_app()["pem"] == "-----BEGIN RSA PRIVATE KEY-----k3y"
    upgraded.close()
    raw = path.read_bytes() + (tmp_path / "disco.sqlite3-wal").read_bytes()
    for secret in (b"ghp_l1nkt0ken", b"hook-s3cret", b"OPENSSH PRIVATE", b"cl1ent-s3cret", b"app-h00k", b"k3y"):
        assert secret not in raw
    assert oct((tmp_path / "secrets.key").stat().st_mode & 0o777) == "0o600"


# -- transactions, durability and the cached reads -------------------------------------------------

def test_a_change_and_its_audit_record_commit_together_or_not_at_all(tmp_path: Path):
    store = Store(tmp_path / "disco.sqlite3")
    store.add_user("ann", "admin")
    with pytest.raises(RuntimeError, match="after the audit"):
        with store.transaction():
            store.set_env("shop", {"A": "1"})  # a transaction of its own, joined to the outer one
            store.audit("ann", "env:set", "shop", "A")
            raise RuntimeError("after the audit")
    assert store.env("shop") == {} and store.audit_log() == []
    with store.transaction():
        store.set_env("shop", {"A": "1"})
        store.audit("ann", "env:set", "shop", "A")
    assert store.env("shop") == {"A": "1"} and [r["action"] for r in store.audit_log()] == ["env:set"]


def test_a_failed_inner_transaction_undoes_only_its_own_writes(tmp_path: Path):
    store = Store(tmp_path / "disco.sqlite3")
    store.add_user("ann", "admin")
    with store.transaction():
        store.audit("ann", "first")
        with pytest.raises(StoreError, match="already exists"):
            with store.transaction() as db:
                db.execute("INSERT INTO audit (at, user, action, target, detail) VALUES ('', 'ann', 'undone', '', '')")
                store.add_user("ann", "admin")
        store.audit("ann", "second")
    assert [r["action"] for r in store.audit_log()] == ["second", "first"]


def test_changes_that_take_access_away_wait_for_the_disk(tmp_path: Path):
    """synchronous=NORMAL for everything else (see runtime/store.py); a revocation must not come
    back after a power loss, so its commit runs with synchronous=FULL."""
    store = Store(tmp_path / "disco.sqlite3")
    store.add_user("ann", "admin")
    store.add_user("bob", "deployer")
    store.grant("bob", "shop")
    store.add_ssh_key(SSHKey("SHA256:x", "bob", "ssh-ed25519", "ssh-ed25519 AAAA", "", now()))
    key = store.add_api_key("bob", "laptop", "digest", "disco_abcd", "")
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)

    def commits_durably(change) -> bool:  # type: ignore[no-untyped-def]
        statements.clear()
        change()
        full = [s for s in statements if s.startswith("PRAGMA synchronous=FULL")]
        return bool(full) and statements.index(full[0]) < statements.index("COMMIT")

    assert not commits_durably(lambda: store.set_env("shop", {"A": "1"}))
    assert commits_durably(lambda: store.revoke_api_key(key.id, now()))
    assert commits_durably(lambda: store.revoke("bob", "shop"))
    assert commits_durably(lambda: store.remove_ssh_key("SHA256:x"))
    assert commits_durably(lambda: store.remove_user("bob"))
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL again afterwards
    with pytest.raises(RuntimeError, match="durable transaction inside one that is not"):
        with store.transaction():
            store.remove_user("ann")
    assert store.get_user("ann") is not None


def test_a_durable_transaction_that_cannot_begin_leaves_commits_cheap_again(tmp_path: Path):
    """The `disco` command holding the write lock past the busy timeout: the revoke fails, and
    the daemon's later commits must not all go on waiting for the disk."""
    store = Store(tmp_path / "disco.sqlite3")
    store.add_user("bob", "deployer")
    key = store.add_api_key("bob", "laptop", "digest", "disco_abcd", "")
    other = sqlite3.connect(tmp_path / "disco.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    store._conn.execute("PRAGMA busy_timeout=0")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.revoke_api_key(key.id, now())
    other.execute("ROLLBACK")
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert not store._conn.in_transaction


def _write_env_vars(store: Store, count: int) -> None:
    for n in range(count):  # a commit each, 4 KB each: 600 of them are well past SQLite's 1000-page WAL
        store.set_env("shop", {f"K{n}": "v" * 4096})


def _database_grows_by(path: Path, size: int, growth: int, within: float = 10) -> bool:
    """Whether the database file (not its WAL) reaches `size` + `growth` bytes within `within` s:
    it grows only when a checkpoint copies pages into it."""
    deadline = time.monotonic() + within
    while path.stat().st_size < size + growth and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.stat().st_size >= size + growth


@pytest.mark.parametrize("after_commits, every, copied", [
    (10**9, 3600, False),  # a thread that never gets to it: nothing may copy the WAL
    (50, 3600, True),  # woken by the commits
    (10**9, 0.05, True),  # woken by its timer (the daemon's way at a few writes a second)
])
def test_the_daemons_commits_never_copy_the_wal_themselves_a_thread_does(tmp_path: Path, after_commits: int,
                                                                          every: float, copied: bool):
    """SQLite's own checkpoint runs inside the commit that fills the WAL, stalling the event loop
    that made it; the daemon's store leaves that to a thread (Store.checkpoint_in_background)."""
    path = tmp_path / "disco.sqlite3"
    store = Store(path)
    try:
        store.checkpoint_in_background(after_commits=after_commits, every=every)
        with pytest.raises(RuntimeError, match="already checkpoints"):
            store.checkpoint_in_background()
        size = path.stat().st_size
        _write_env_vars(store, 600)
        if copied:
            assert _database_grows_by(path, size, 600 * 4096), "the checkpoint thread did not copy the WAL"
        else:
            assert path.stat().st_size == size, "a commit copied the WAL into the database itself"
            assert Path(f"{path}-wal").stat().st_size > 600 * 4096  # all of it still there
        assert len(store.env("shop")) == 600
    finally:
        store.close()
    assert not [t for t in threading.enumerate() if t.name == "store-checkpoint"]


def test_cached_reads_see_every_change_at_once_from_any_connection(tmp_path: Path):
    """The reads every API request makes are answered from memory until a row they read from
    changes: a change by the daemon itself, by the `disco` command (another Store, another
    process), or by hand in sqlite3 shows on the very next read."""
    path = tmp_path / "disco.sqlite3"
    daemon_side = Store(path)
    daemon_side.add_user("bob", "deployer")
    daemon_side.grant("bob", "shop")
    daemon_side.add_project("shop", "bob")
    key = daemon_side.add_api_key("bob", "laptop", "digest", "disco_abcd", "")
    for _ in range(2):  # the second time from the cache
        assert daemon_side.api_key_by_digest("digest")[0].revoked_at == ""
        assert daemon_side.has_grant("bob", "shop") and daemon_side.grants_of("bob") == ["shop"]
        assert [p["name"] for p in daemon_side.list_projects()] == ["shop"] == daemon_side.project_names()

    daemon_side.revoke_api_key(key.id, now())  # the daemon's own writer
    assert daemon_side.api_key_by_digest("digest")[0].revoked_at != ""

    shell_side = Store(path)  # what `disco users:revoke` on the server's shell opens
    shell_side.revoke("bob", "shop")
    assert not daemon_side.has_grant("bob", "shop") and daemon_side.grants_of("bob") == []

    by_hand = sqlite3.connect(path, isolation_level=None)
    by_hand.execute("UPDATE users SET role = 'admin' WHERE name = 'bob'")
    assert daemon_side.api_key_by_digest("digest")[1].role == "admin"
    by_hand.execute("UPDATE users SET role = 'deployer' WHERE name = 'bob'")  # a role lowered
    assert daemon_side.api_key_by_digest("digest")[1].role == "deployer"

    by_hand.execute("UPDATE api_keys SET expires_at = '2000-01-01T00:00:00+00:00'")
    assert daemon_side.api_key_by_digest("digest")[0].expires_at.startswith("2000")

    deployment = shell_side.create_deployment("shop", "abc", "main", "bob", "push", tmp_path)
    assert daemon_side.list_projects()[0]["live_deployment"] is None
    shell_side.update_deployment("shop", deployment.number, status="live")
    assert daemon_side.list_projects()[0]["live_deployment"] == deployment.number
    shell_side.add_project("cart", "alice")
    assert daemon_side.project_names() == ["cart", "shop"]
    by_hand.execute("UPDATE projects SET deploy_branch = 'trunk'")
    assert daemon_side.get_project("shop")["deploy_branch"] == "trunk"  # type: ignore[index]

    shell_side.remove_user("bob")
    assert daemon_side.api_key_by_digest("digest") is None
    daemon_side.delete_project("shop")
    assert [p["name"] for p in daemon_side.list_projects()] == ["cart"] == daemon_side.project_names()
    assert daemon_side.get_project("shop") is None


def test_writes_elsewhere_leave_the_cached_key_and_project_in_memory(tmp_path: Path):
    """An env var set and its audit record (what most API writes are) change no key, user,
    grant, project or deployment: the next request's reads stay in memory, without SQL."""
    store = Store(tmp_path / "disco.sqlite3")
    store.add_user("bob", "admin")
    store.add_project("shop", "bob")
    store.add_api_key("bob", "laptop", "digest", "disco_abcd", "")
    store.api_key_by_digest("digest"), store.get_project("shop"), store.list_projects()
    statements: list[str] = []
    store._reader().conn.set_trace_callback(statements.append)
    with store.transaction():
        store.set_env("shop", {"A": "1"})
        store.audit("bob", "env:set", "shop", "A")
    store.api_key_by_digest("digest"), store.get_project("shop"), store.list_projects()
    assert [s for s in statements if "changes" not in s] == []  # only the counters were read


def test_cached_reads_hand_out_copies(tmp_path: Path):
    store = Store(tmp_path / "disco.sqlite3")
    store.add_project("shop", "ann")
    store.list_projects()[0]["name"] = "changed by a caller"
    store.get_project("shop")["deploy_branch"] = "changed by a caller"  # type: ignore[index]
    assert store.list_projects()[0]["name"] == "shop"
    assert store.get_project("shop")["deploy_branch"] == "main"  # type: ignore[index]


def test_each_thread_caches_what_it_read_and_sees_other_threads_commits(tmp_path: Path):
    store = Store(tmp_path / "disco.sqlite3")
    store.add_project("shop", "ann")
    seen: list[list[str]] = []

    def reader() -> None:
        seen.append([p["name"] for p in store.list_projects()])

    for expected in (["shop"], ["blog", "shop"]):
        thread = threading.Thread(target=reader)
        thread.start()
        thread.join()
        assert seen[-1] == expected and [p["name"] for p in store.list_projects()] == expected
        store.add_project("blog", "ann")  # from this thread, seen by the next reader and by this one


def test_the_audit_log_filters_by_user_action_and_target(tmp_path: Path):
    store = Store(tmp_path / "disco.sqlite3")
    store.audit("ann", "apikeys:create", "bob", "key 1")
    store.audit("ann", "apikeys:revoke", "bob", "key 1")
    store.audit("bob", "push", "shop")
    store.audit("ann", "apikeysx", "bob")  # a look-alike action is not in the apikeys group
    store.audit("ann", "users:add", "carl")
    actions = lambda **filters: [r["action"] for r in store.audit_log(**filters)]  # noqa: E731
    assert actions(action="apikeys") == ["apikeys:revoke", "apikeys:create"]  # a group, newest first
    assert actions(action="apikeys:create") == ["apikeys:create"]
    assert actions(user="bob") == ["push"]
    assert actions(target="bob", user="ann", action="apikeysx") == ["apikeysx"]
    assert actions(target="bob", limit=2) == ["apikeysx", "apikeys:revoke"]
    assert actions(user="nobody") == []
    assert actions(action="x' OR 1=1 --") == []  # values are parameters, never SQL
    assert len(store.audit_log()) == 5


def test_the_live_and_newest_deployments_of_all_projects_agree_with_each_projects_own(tmp_path: Path):
    """What the projects page reads in one query each, for every project at once."""
    store = Store(tmp_path / "disco.sqlite3")
    outcomes = {"shop": ["live", "replaced", "live", "failed"], "blog": ["failed"], "wiki": [], "api": ["live"]}
    for project, statuses in outcomes.items():
        store.add_project(project, "ann")
        for status in statuses:
            d = store.create_deployment(project, "a" * 40, "main", "ann", "push", tmp_path)
            store.update_deployment(project, d.number, status=status)
    newest = {d.project: d for d in store.newest_deployments()}
    live = {d.project: d for d in store.live_deployments()}
    for project in outcomes:
        assert newest.get(project) == next(iter(store.list_deployments(project, 1)), None)
        assert live.get(project) == store.live_deployment(project)
    assert (newest["shop"].number, live["shop"].number) == (4, 3)
    assert "wiki" not in newest and "blog" not in live
