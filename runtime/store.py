"""The state store: users, grants, SSH keys, projects and the audit log in SQLite.

One connection per store, shared by the daemon's threads behind a lock (made with
check_same_thread=False). Its methods write plain SQL; sqlite-utils (with dateutil and pluggy,
about 10 MB of a fresh interpreter) is imported only to run a migration, so a daemon whose store
is up to date never loads it. WAL mode lets the `disco` command on the server's shell write
while the daemon reads.

Durability: in WAL mode with synchronous=NORMAL a commit is safe from a crash of the daemon
(or of anything else but the machine) and never corrupts the file, but the last commits before
a power loss may roll back, together. That costs a change and its audit record at once (they
commit in one transaction), never one without the other. Changes that take access away (a key
revoked, a user or SSH key removed, a grant taken back) are `durable`: their commit waits for
the disk (synchronous=FULL), so a power loss cannot bring a revoked key back. An fsync on every
commit was most of the cost of an API write (two of them: the change, then its audit record).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from runtime import disk
from runtime.secretbox import KEY_NAME as SECRETS_KEY_NAME
from runtime.secretbox import SecretBox

if TYPE_CHECKING:
    import sqlite_utils
    from _typeshed import DataclassInstance

Record = TypeVar("Record", bound="DataclassInstance")  # User, Deployment, ApiKey, SSHKey
Cached = TypeVar("Cached")  # what Store._cached keeps: shared, so never changed by its callers

log = logging.getLogger("disco.store")

ROLES = ("admin", "deployer")
# The daemon's store copies its WAL into the database from a thread of its own (see
# Store.checkpoint_in_background): after this many commits, or every CHECKPOINT_SECONDS.
CHECKPOINT_AFTER_COMMITS = 200
CHECKPOINT_SECONDS = 1.0


class StoreError(Exception):
    """A change the store refused; the message names the problem for the person who asked.

    `kind` is "not_found" or "conflict", so front doors can answer with the right status.
    """

    def __init__(self, message: str, kind: str = "conflict") -> None:
        super().__init__(message)
        self.kind = kind


class StoreFull(sqlite3.OperationalError):
    """A write the data dir had no room for; str() is the reason people see."""

    sqlite_errorcode = sqlite3.SQLITE_FULL


@dataclass(frozen=True)
class User:
    name: str
    role: str
    created_at: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Deployment:
    project: str
    number: int
    commit_sha: str
    branch: str
    user: str
    source: str  # push, redeploy, rollback, env
    status: str
    reason: str
    image: str
    rollback_of: int | None
    web_port: int  # 0: no web service, so no route
    timings: str  # JSON object: step name -> seconds
    log_path: str
    created_at: str
    finished_at: str
    delivery: str  # the GitHub delivery id of a webhook deployment
    web_service: str  # the swarm service its web traffic goes to ("": made before names.join)
    images: str  # JSON object: image name -> tag, for the app's images besides the default (`image`)
    static_site: str  # the folder Caddy serves for a static site (under run/static), else ""

    @property
    def image_tags(self) -> dict[str, str]:
        """The tags of its images besides the default one: image name -> tag."""
        return dict(json.loads(self.images or "{}"))

    def image_of(self, name: str) -> str:
        """The tag of one of this deployment's images ("default" is `image`)."""
        return self.image if name == "default" else self.image_tags.get(name, "")


@dataclass(frozen=True)
class ApiKey:
    id: int
    user: str
    label: str
    prefix: str  # the first characters, so a person can tell keys apart; never enough to use
    created_at: str
    last_used_at: str
    expires_at: str
    revoked_at: str


@dataclass(frozen=True)
class Session:
    """A dashboard sign-in: a browser holding a random token (stored only as its hash), made
    from an API key, and ended with it."""

    id: int
    user: str
    api_key_id: int
    created_at: str
    expires_at: str  # slides forward while it is used (hooks/sessions.py)
    last_seen_at: str
    address: str
    agent: str  # the browser's User-Agent, cut short, so a person can tell sessions apart
    ended_at: str


@dataclass(frozen=True)
class SSHKey:
    fingerprint: str
    user: str
    key_type: str
    public_key: str  # "<type> <base64>" without the comment
    comment: str
    added_at: str


def _from_row(cls: type[Record], row: Mapping[str, Any]) -> Record:
    """Build a record from a row, ignoring columns that later migrations added."""
    return cls(**{f.name: row[f.name] for f in fields(cls)})


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _migration_1_team(db: sqlite_utils.Database, _box: SecretBox) -> None:
    db.table("users").create({"name": str, "role": str, "created_at": str}, pk="name")
    db.table("grants").create(
        {"user": str, "project": str, "granted_at": str},
        pk=("user", "project"),
        foreign_keys=[("user", "users", "name")],
    )
    db.table("ssh_keys").create(
        {
            "fingerprint": str,
            "user": str,
            "key_type": str,
            "public_key": str,
            "comment": str,
            "added_at": str,
        },
        pk="fingerprint",
        foreign_keys=[("user", "users", "name")],
    )
    db.table("ssh_keys").create_index(["user"])
    db.table("projects").create(
        {"name": str, "created_at": str, "created_by": str, "deploy_branch": str},
        pk="name",
    )
    db.table("audit").create(
        {"id": int, "at": str, "user": str, "action": str, "target": str, "detail": str},
        pk="id",
    )


def _migration_2_deploys(db: sqlite_utils.Database, _box: SecretBox) -> None:
    db.table("deployments").create(
        {
            "id": int,
            "project": str,
            "number": int,
            "commit_sha": str,
            "branch": str,
            "user": str,
            "source": str,
            "status": str,
            "reason": str,
            "image": str,
            "rollback_of": int,
            "web_port": int,
            "timings": str,
            "log_path": str,
            "created_at": str,
            "finished_at": str,
        },
        pk="id",
    )
    db.table("deployments").create_index(["project", "number"], unique=True)
    db.table("deployments").create_index(["status"])
    db.table("env_vars").create(
        {"project": str, "name": str, "value": str, "updated_at": str}, pk=("project", "name")
    )
    db.table("domains").create({"domain": str, "project": str, "added_at": str}, pk="domain")
    db.table("scale").create({"project": str, "service": str, "replicas": int}, pk=("project", "service"))


def _migration_3_api_keys(db: sqlite_utils.Database, _box: SecretBox) -> None:
    db.table("api_keys").create(
        {
            "id": int, "user": str, "label": str, "digest": str, "prefix": str, "created_at": str,
            "last_used_at": str, "expires_at": str, "revoked_at": str,
        },
        pk="id",
        foreign_keys=[("user", "users", "name")],
    )
    db.table("api_keys").create_index(["digest"], unique=True)


def _migration_4_github(db: sqlite_utils.Database, _box: SecretBox) -> None:
    db.table("github_links").create(
        {
            "project": str, "repo": str, "branch": str, "clone_url": str, "secret": str, "token": str,
            "deploy_key": str, "force_mirror": int, "created_at": str,
        },
        pk="project",
    )
    db.table("github_deliveries").create(
        {"delivery": str, "project": str, "event": str, "result": str, "deployment": int, "received_at": str},
        pk="delivery",
    )
    db.table("github_deliveries").create_index(["project"])
    db.table("deployments").add_column("delivery", str)


def _migration_5_web_service(db: sqlite_utils.Database, _box: SecretBox) -> None:
    # The swarm service a deployment's web traffic goes to; "" for deployments made before
    # names were collision-free (runtime/names.py), whose services still have the old names.
    db.table("deployments").add_column("web_service", str, not_null_default="")


def _migration_6_cron(db: sqlite_utils.Database, _box: SecretBox) -> None:
    # One row per run of a scheduled service (or per time it was skipped), and per scheduled
    # service the last time it was due that the scheduler handled, so a restart replays at most one.
    db.table("cron_runs").create(
        {
            "id": int, "project": str, "service": str, "status": str, "trigger": str, "user": str,
            "due_at": str, "started_at": str, "finished_at": str, "exit_code": int, "reason": str,
            "deployment": int, "image": str, "log_path": str,
        },
        pk="id",
    )
    db.table("cron_runs").create_index(["project", "service", "id"])
    db.table("cron_runs").create_index(["status"])
    # The schedule it was handled under: a changed schedule starts afresh instead of firing at once.
    db.table("cron_state").create({"project": str, "service": str, "schedule": str, "last_due": str},
                                  pk=("project", "service"))


def _migration_7_github_app(db: sqlite_utils.Database, box: SecretBox) -> None:
    # The GitHub App of this server (one), its installations and the repos each can reach, and
    # the manifest flows that create it. Links made through the App name their installation.
    db.table("github_app").create(
        {"key": str, "app_id": int, "slug": str, "name": str, "owner": str, "html_url": str, "client_id": str,
         "client_secret": str, "webhook_secret": str, "pem": str, "created_by": str, "created_at": str},
        pk="key",
    )
    db.table("github_installations").create({"id": int, "account": str, "suspended": int, "updated_at": str},
                                            pk="id")
    db.table("github_installation_repos").create({"installation_id": int, "repo": str},
                                                 pk=("installation_id", "repo"))
    db.table("github_installation_repos").create_index(["repo"])
    db.table("github_app_flows").create(
        {"id": str, "user": str, "org": str, "start_digest": str, "state_digest": str, "binding_digest": str,
         "created_at": str, "expires_at": float, "started": int, "finished": int},
        pk="id",
    )
    db.table("github_links").add_column("installation_id", int, not_null_default=0)
    # Secrets at rest: the tokens, deploy keys and webhook secrets of existing links are sealed.
    rows = db.execute("SELECT project, token, deploy_key, secret FROM github_links").fetchall()
    for project, token, deploy_key, secret in rows:
        db.execute("UPDATE github_links SET token = ?, deploy_key = ?, secret = ? WHERE project = ?",
                   [box.seal(token or ""), box.seal(deploy_key or ""), box.seal(secret or ""), project])


def _migration_8_images_and_static_sites(db: sqlite_utils.Database, _box: SecretBox) -> None:
    # An app may build several images ([images.NAME]) and serve its web as a static site.
    db.table("deployments").add_column("images", str, not_null_default="{}")
    db.table("deployments").add_column("static_site", str, not_null_default="")


def _migration_9_change_counters(db: sqlite_utils.Database, _box: SecretBox) -> None:
    # A counter per group of tables, moved on by a trigger at every change of one of their rows,
    # whoever writes (the daemon, the `disco` command, sqlite3 by hand): a daemon keeps what it
    # read of a group until its counter moves (Store._cached). An env var or audit record
    # written leaves them alone, so the API's next request still finds its key in memory.
    db.execute("CREATE TABLE changes (name TEXT PRIMARY KEY, counter INTEGER NOT NULL)")
    for group, tables in (("access", ("users", "api_keys", "grants")), ("projects", ("projects", "deployments"))):
        db.execute("INSERT INTO changes (name, counter) VALUES (?, 0)", [group])
        for table in tables:
            for event in ("INSERT", "UPDATE", "DELETE"):
                db.execute(f"CREATE TRIGGER {table}_{event.lower()}_counted AFTER {event} ON {table} "
                           f"BEGIN UPDATE changes SET counter = counter + 1 WHERE name = '{group}'; END")


def _migration_10_sessions(db: sqlite_utils.Database, _box: SecretBox) -> None:
    # Dashboard sessions and one-time sign-in links, each tied to the API key that made them:
    # revoking the key (or removing its user) ends them. Counted with the API keys ("access"),
    # since a request reads them the same way.
    db.execute("CREATE TABLE sessions (id INTEGER PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name), "
               "api_key_id INTEGER NOT NULL REFERENCES api_keys(id), digest TEXT NOT NULL UNIQUE, "
               "created_at TEXT NOT NULL, expires_at TEXT NOT NULL, last_seen_at TEXT NOT NULL, "
               "address TEXT NOT NULL, agent TEXT NOT NULL, ended_at TEXT NOT NULL DEFAULT '')")
    db.execute("CREATE INDEX sessions_user ON sessions (user)")
    db.execute("CREATE TABLE sign_in_links (digest TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name), "
               "api_key_id INTEGER NOT NULL REFERENCES api_keys(id), expires_at TEXT NOT NULL, "
               "used_at TEXT NOT NULL DEFAULT '')")
    for event in ("INSERT", "UPDATE", "DELETE"):
        db.execute(f"CREATE TRIGGER sessions_{event.lower()}_counted AFTER {event} ON sessions "
                   "BEGIN UPDATE changes SET counter = counter + 1 WHERE name = 'access'; END")


# Applied in order on every open; PRAGMA user_version records how many have run.
# Append new steps; never edit a released one.
MIGRATIONS: list[Callable[[sqlite_utils.Database, SecretBox], None]] = [
    _migration_1_team, _migration_2_deploys, _migration_3_api_keys, _migration_4_github,
    _migration_5_web_service, _migration_6_cron, _migration_7_github_app,
    _migration_8_images_and_static_sites, _migration_9_change_counters, _migration_10_sessions,
]
SEALED_LINK_COLUMNS = ("token", "deploy_key", "secret")
SEALED_APP_COLUMNS = ("client_secret", "webhook_secret", "pem")

class DeploymentStatus(StrEnum):
    """A deployment's life: queued -> building -> starting -> live, or failed / cancelled /
    superseded on the way; a live one becomes replaced (or rolled back) when another goes live."""

    QUEUED = "queued"
    BUILDING = "building"
    STARTING = "starting"
    LIVE = "live"
    REPLACED = "replaced"
    ROLLED_BACK = "rolled back"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


# Not finished yet: a daemon restart settles these (hooks/deployer.py recover).
ACTIVE_STATUSES = (DeploymentStatus.QUEUED, DeploymentStatus.BUILDING, DeploymentStatus.STARTING)
# Ran as the live version at some point: their images are worth keeping for a rollback.
WENT_LIVE = frozenset({DeploymentStatus.LIVE, DeploymentStatus.REPLACED, DeploymentStatus.ROLLED_BACK})


class CronRunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # due while the previous run was still going: runs never overlap
    INTERRUPTED = "interrupted"  # the daemon stopped during it


@dataclass(frozen=True)
class CronRun:
    id: int
    project: str
    service: str
    status: str
    trigger: str  # "schedule", or "manual" (cron:run)
    user: str  # who ran it by hand; "" for the schedule
    due_at: str  # the time the schedule named ("" for a manual run)
    started_at: str
    finished_at: str
    exit_code: int | None
    reason: str
    deployment: int  # whose image and config it ran
    image: str
    log_path: str


class Store:
    """All state, behind small methods that speak plain SQL.

    sqlite-utils builds the schema (migrations); the methods below use plain SQL because
    sqlite-utils looks the schema up again on every call, which made each API request run
    hundreds of statements. Writes go through one connection under a lock; reads use a
    connection per thread, so a request never waits for another thread's commit (WAL).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = self._connect(check_same_thread=False)
        self._lock = threading.RLock()
        self._depth = 0  # transactions open on _conn, the outermost first (touched under _lock only)
        self._durable = False  # whether the open transaction's commit must reach the disk
        self._checkpointer: _Checkpointer | None = None
        self._local = threading.local()
        self.secrets = SecretBox(path.parent / SECRETS_KEY_NAME)  # secrets at rest (runtime/secretbox.py)
        self.reserve = disk.Reserve(path.parent / disk.RESERVE_NAME)  # kept by the daemon (hooks/disks.py)
        self.migrate()

    def _connect(self, check_same_thread: bool = True) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=check_same_thread, timeout=10, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        # Deleted and replaced content is zeroed, not left in free pages: a secret sealed by a
        # migration leaves no clear copy behind in the file.
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA synchronous=NORMAL")  # see the module's docstring; durable=True waits for the disk
        conn.row_factory = sqlite3.Row
        return conn

    def close(self) -> None:
        if self._checkpointer:
            self._checkpointer.stop()
            self._checkpointer = None
        with self._lock:
            self._conn.close()

    def checkpoint_in_background(self, after_commits: int = CHECKPOINT_AFTER_COMMITS,
                                 every: float = CHECKPOINT_SECONDS) -> None:
        """Copy the WAL into the database from a thread of its own, never inside a commit.

        By default SQLite checkpoints in the commit that takes the WAL past 1000 pages: that
        commit waits for the copy and its fsyncs, up to milliseconds every few hundred API writes,
        and so does the event loop that runs it and every request queued behind it (in-process,
        1% of writes took 21% of the store's time). A checkpoint may run beside commits (WAL), and
        sqlite3 lets go of the GIL while it works, so the thread hardly costs the loop anything.
        The daemon calls this once; the `disco` command's short-lived stores keep SQLite's own.
        """
        with self._lock:
            if self._checkpointer:
                raise RuntimeError("this store already checkpoints in the background")
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = _Checkpointer(self._connect(check_same_thread=False), after_commits, every)

    def _committed(self) -> None:
        if self._checkpointer:
            self._checkpointer.committed()

    @contextmanager
    def transaction(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """Serialise writes from threads and make a group of them all-or-nothing.

        A transaction opened inside another (on the same thread) is part of it: a change and
        its audit record commit together, once. An error inside the inner one undoes its own
        writes (a savepoint) and goes on up. `durable`: the commit waits for the disk; SQLite
        takes that only before a transaction begins, so the outermost one must say it.
        """
        with self._lock, self._full_disk_said():
            if self._depth:
                if durable and not self._durable:
                    raise RuntimeError("a durable transaction inside one that is not: open the outer one durable")
                yield from self._nested()
                return
            if durable:  # this commit fsyncs the WAL, and with it every commit before it
                self._conn.execute("PRAGMA synchronous=FULL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")  # inside: a BEGIN that fails resets synchronous too
                self._depth, self._durable = 1, durable
                yield self._conn
                self._conn.execute("COMMIT")
                self._committed()
            except BaseException:
                # SQLite may have rolled back already (a full disk does that): a second ROLLBACK
                # would hide the real error; a COMMIT that failed must not leave it open either.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                self._depth, self._durable = 0, False
                if durable:
                    self._conn.execute("PRAGMA synchronous=NORMAL")

    def _nested(self) -> Iterator[sqlite3.Connection]:
        savepoint = f"nested_{self._depth}"
        self._conn.execute(f"SAVEPOINT {savepoint}")
        self._depth += 1
        try:
            yield self._conn
        except BaseException:
            if self._conn.in_transaction:  # not when SQLite rolled the whole transaction back itself
                self._conn.execute(f"ROLLBACK TO {savepoint}")
                self._conn.execute(f"RELEASE {savepoint}")
            raise
        else:
            self._conn.execute(f"RELEASE {savepoint}")
        finally:
            self._depth -= 1

    @contextmanager
    def _full_disk_said(self) -> Iterator[None]:
        """A write that failed for lack of space raises StoreFull, saying so; the data dir's
        reserve goes, so the writes that record the failure itself still fit."""
        try:
            yield
        except sqlite3.Error as err:
            if not disk.is_disk_full(err) or isinstance(err, StoreFull):
                raise
            reason = disk.no_space("the store could not be written", self.path.parent)
            self.reserve.release()
            raise StoreFull(reason) from err

    def _reader(self) -> _Reader:
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = _Reader(self._connect())
        return reader

    def _rows(self, sql: str, args: list | tuple = ()) -> list[dict]:
        return _fetch(self._reader().conn, sql, args)

    def _one(self, sql: str, args: list | tuple = ()) -> dict | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    def _cached(self, group: str, key: Hashable, load: Callable[[], Cached]) -> Cached:
        """What `load` read of the tables of `group` (see _migration_9_change_counters), kept
        in memory per thread until one of their rows changes: for the reads every API request
        makes (its key and user, the caller's grants, a project, the project list).

        The group's counter moves, in the same transaction, with every change of one of its
        tables, by any connection of any process: a key revoked or a grant taken back by the
        `disco` command on the server's shell counts on the very next read. It is read before
        `load`, so a change in between makes the entry look older than it is, never newer.
        What `load` returns is shared: a frozen record, a tuple, never something a caller changes.
        """
        reader = self._reader()
        counter = reader.conn.execute("SELECT counter FROM changes WHERE name = ?", [group]).fetchone()[0]
        seen = reader.caches.get(group)
        if seen is None or seen[0] != counter:
            seen = reader.caches[group] = (counter, {})
        entries = seen[1]
        if key in entries:
            return entries[key]
        value = load()
        if len(entries) >= READ_CACHE_ENTRIES:
            entries.clear()
        entries[key] = value
        return value

    def version(self, group: str) -> int:
        """The change counter of a group of tables ("access", "projects"): it moves with every
        change of one of their rows, so a follower can tell at a glance whether to look again."""
        return int(self._reader().conn.execute("SELECT counter FROM changes WHERE name = ?", [group]).fetchone()[0])

    def _cached_rows(self, group: str, sql: str, args: list | tuple = ()) -> list[dict]:
        rows = self._cached(group, (sql, tuple(args)), lambda: tuple(self._rows(sql, args)))
        return [row.copy() for row in rows]  # callers may change what they get; the cache must not

    def _write(self, sql: str, args: list | tuple = ()) -> sqlite3.Cursor:
        with self._lock, self._full_disk_said():
            cursor = self._conn.execute(sql, args)
            if not self._depth:  # a statement of its own: it committed
                self._committed()
            return cursor

    def migrate(self, upto: int | None = None) -> None:
        target = len(MIGRATIONS) if upto is None else upto
        with self.transaction() as conn:
            done = conn.execute("PRAGMA user_version").fetchone()[0]
            if done >= target:
                return
            import sqlite_utils  # here only: see the module's docstring

            db = sqlite_utils.Database(conn, recursive_triggers=False)  # as the store runs
            for index in range(done, target):
                MIGRATIONS[index](db, self.secrets)
                conn.execute(f"PRAGMA user_version={index + 1}")
        with self._lock:  # what the migrations replaced leaves the WAL too
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @property
    def schema_version(self) -> int:
        return self._rows("PRAGMA user_version")[0]["user_version"]

    # -- users -----------------------------------------------------------------------------

    def add_user(self, name: str, role: str) -> User:
        if role not in ROLES:
            raise StoreError(f"unknown role {role!r}: use one of {', '.join(ROLES)}", "bad_request")
        row = {"name": name, "role": role, "created_at": now()}
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", [name]).fetchone():
                raise StoreError(f"user {name!r} already exists")
            _insert(db, "users", row)
        return User(**row)

    def get_user(self, name: str) -> User | None:
        row = self._one("SELECT * FROM users WHERE name = ?", [name])
        return _from_row(User, row) if row else None

    def list_users(self) -> list[User]:
        return [_from_row(User, row) for row in self._rows("SELECT * FROM users ORDER BY name")]

    def remove_user(self, name: str) -> None:
        """Remove a user with their keys and grants: a departed member loses access at once."""
        with self.transaction(durable=True) as db:
            self._require_user(db, name)
            for table in ("sessions", "sign_in_links", "ssh_keys", "api_keys", "grants"):
                db.execute(f"DELETE FROM {table} WHERE user = ?", [name])
            db.execute("DELETE FROM users WHERE name = ?", [name])

    def count_admins(self) -> int:
        return self._rows("SELECT COUNT(*) AS n FROM users WHERE role = 'admin'")[0]["n"]

    # -- grants ----------------------------------------------------------------------------

    def grant(self, user: str, project: str) -> None:
        with self.transaction() as db:
            self._require_user(db, user)
            db.execute("INSERT OR IGNORE INTO grants (user, project, granted_at) VALUES (?, ?, ?)",
                       [user, project, now()])

    def revoke(self, user: str, project: str) -> None:
        with self.transaction(durable=True) as db:
            self._require_user(db, user)
            if not db.execute("SELECT 1 FROM grants WHERE user = ? AND project = ?", [user, project]).fetchone():
                raise StoreError(f"user {user!r} has no grant on project {project!r}", "not_found")
            db.execute("DELETE FROM grants WHERE user = ? AND project = ?", [user, project])

    def grants_of(self, user: str) -> list[str]:
        return list(self._cached("access", ("grants_of", user), lambda: tuple(
            r["project"] for r in self._rows("SELECT project FROM grants WHERE user = ? ORDER BY project", [user]))))

    def has_grant(self, user: str, project: str) -> bool:
        return self._cached("access", ("has_grant", user, project), lambda: bool(
            self._rows("SELECT 1 FROM grants WHERE user = ? AND project = ?", [user, project])))

    # -- SSH keys --------------------------------------------------------------------------

    def add_ssh_key(self, key: SSHKey) -> None:
        with self.transaction() as db:
            self._require_user(db, key.user)
            owner = db.execute("SELECT user FROM ssh_keys WHERE fingerprint = ?", [key.fingerprint]).fetchone()
            if owner:
                raise StoreError(f"key {key.fingerprint} is already registered to user {owner[0]!r}")
            _insert(db, "ssh_keys", key.__dict__)

    def user_for_key(self, fingerprint: str) -> User | None:
        row = self._one("SELECT u.* FROM ssh_keys k JOIN users u ON u.name = k.user WHERE k.fingerprint = ?",
                        [fingerprint])
        return _from_row(User, row) if row else None

    def list_ssh_keys(self, user: str | None = None) -> list[SSHKey]:
        if user:
            rows = self._rows("SELECT * FROM ssh_keys WHERE user = ? ORDER BY user, added_at", [user])
        else:
            rows = self._rows("SELECT * FROM ssh_keys ORDER BY user, added_at")
        return [_from_row(SSHKey, row) for row in rows]

    def remove_ssh_key(self, fingerprint: str) -> SSHKey:
        with self.transaction(durable=True) as db:
            row = db.execute("SELECT * FROM ssh_keys WHERE fingerprint = ?", [fingerprint]).fetchone()
            if not row:
                raise StoreError(f"no SSH key with fingerprint {fingerprint}", "not_found")
            db.execute("DELETE FROM ssh_keys WHERE fingerprint = ?", [fingerprint])
        return _from_row(SSHKey, dict(row))

    # -- projects --------------------------------------------------------------------------

    def get_project(self, name: str) -> dict | None:
        rows = self._cached_rows("projects", "SELECT * FROM projects WHERE name = ?", [name])
        return rows[0] if rows else None

    def add_project(self, name: str, created_by: str, deploy_branch: str = "main") -> dict:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO projects (name, created_at, created_by, deploy_branch) "
                       "VALUES (?, ?, ?, ?)", [name, now(), created_by, deploy_branch])
        return self.get_project(name)  # type: ignore[return-value]

    def delete_project(self, name: str) -> None:
        """Forget a project and everything recorded about it (grants too: a new project of the
        same name later must not inherit them)."""
        with self.transaction() as db:
            for table in ("domains", "env_vars", "scale", "deployments", "github_links", "github_deliveries",
                          "cron_runs", "cron_state"):
                db.execute(f"DELETE FROM {table} WHERE project = ?", [name])
            db.execute("DELETE FROM grants WHERE project = ?", [name])
            db.execute("DELETE FROM projects WHERE name = ?", [name])

    def project_names(self) -> list[str]:
        """Every project's name, in order: what a request's visibility check needs, without
        copying every project's row as list_projects must."""
        names = self._cached("projects", "project_names",
                             lambda: tuple(row["name"] for row in self._rows("SELECT name FROM projects ORDER BY name")))
        return list(names)

    def list_projects(self) -> list[dict]:
        """Every project with the number of its live deployment (or None), in one query."""
        return self._cached_rows(
            "projects", "SELECT p.*, (SELECT MAX(d.number) FROM deployments d WHERE d.project = p.name AND d.status = 'live')"
            " AS live_deployment FROM projects p ORDER BY p.name")

    # -- deployments -----------------------------------------------------------------------

    def create_deployment(
        self, project: str, commit_sha: str, branch: str, user: str, source: str,
        log_dir: Path, image: str = "", rollback_of: int | None = None, delivery: str = "", images: str = "{}",
    ) -> Deployment:
        with self.transaction() as db:
            number = db.execute(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM deployments WHERE project = ?", [project]
            ).fetchone()[0]
            row = {
                "project": project, "number": number, "commit_sha": commit_sha, "branch": branch,
                "user": user, "source": source, "status": DeploymentStatus.QUEUED.value, "reason": "", "image": image,
                "rollback_of": rollback_of, "web_port": 0, "web_service": "", "timings": "{}", "delivery": delivery,
                "images": images, "static_site": "",
                "log_path": str(log_dir / project / f"{number}.log"),
                "created_at": now(), "finished_at": "",
            }
            _insert(db, "deployments", row)
        return _from_row(Deployment, row)

    def update_deployment(self, project: str, number: int, **changes: object) -> Deployment:
        for column in changes:
            if column not in DEPLOYMENT_COLUMNS:
                raise ValueError(f"deployments has no column {column!r}")
        with self.transaction() as db:
            db.execute(
                f"UPDATE deployments SET {', '.join(f'{k} = ?' for k in changes)} WHERE project = ? AND number = ?",
                [*changes.values(), project, number],
            )
        found = self.get_deployment(project, number)
        assert found is not None
        return found

    def get_deployment(self, project: str, number: int) -> Deployment | None:
        row = self._one("SELECT * FROM deployments WHERE project = ? AND number = ?", [project, number])
        return _from_row(Deployment, row) if row else None

    def list_deployments(self, project: str, limit: int = 50) -> list[Deployment]:
        rows = self._rows("SELECT * FROM deployments WHERE project = ? ORDER BY number DESC LIMIT ?", [project, limit])
        return [_from_row(Deployment, row) for row in rows]

    def live_deployment(self, project: str) -> Deployment | None:
        row = self._one("SELECT * FROM deployments WHERE project = ? AND status = 'live' "
                        "ORDER BY number DESC LIMIT 1", [project])
        return _from_row(Deployment, row) if row else None

    def live_deployments(self) -> list[Deployment]:
        """The live deployment of every project that has one, in one query."""
        rows = self._rows("SELECT * FROM deployments d WHERE status = 'live' AND number = "
                          "(SELECT MAX(number) FROM deployments WHERE project = d.project AND status = 'live') "
                          "ORDER BY project")
        return [_from_row(Deployment, row) for row in rows]

    def newest_deployments(self) -> list[Deployment]:
        """The newest deployment of every project that has one, in one query."""
        rows = self._rows("SELECT d.* FROM projects p JOIN deployments d ON d.project = p.name AND d.number = "
                          "(SELECT MAX(number) FROM deployments WHERE project = p.name) ORDER BY p.name")
        return [_from_row(Deployment, row) for row in rows]

    def deployments_with_status(self, statuses: tuple[str, ...]) -> list[Deployment]:
        marks = ", ".join("?" for _ in statuses)
        rows = self._rows(f"SELECT * FROM deployments WHERE status IN ({marks}) ORDER BY id", list(statuses))
        return [_from_row(Deployment, row) for row in rows]

    # -- env vars, domains, scale ----------------------------------------------------------

    def env(self, project: str) -> dict[str, str]:
        rows = self._rows("SELECT name, value FROM env_vars WHERE project = ? ORDER BY name", [project])
        return {row["name"]: row["value"] for row in rows}

    def set_env(self, project: str, values: dict[str, str]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO env_vars (project, name, value, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (project, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                [(project, k, v, now()) for k, v in values.items()],
            )

    def unset_env(self, project: str, names: list[str]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM env_vars WHERE project = ? AND name = ?", [(project, n) for n in names])

    def domains(self, project: str | None = None) -> list[dict]:
        if project:
            return self._rows("SELECT * FROM domains WHERE project = ? ORDER BY domain", [project])
        return self._rows("SELECT * FROM domains ORDER BY domain")

    def add_domain(self, project: str, domain: str) -> None:
        with self.transaction() as db:
            owner = db.execute("SELECT project FROM domains WHERE domain = ?", [domain]).fetchone()
            if owner:
                raise StoreError(f"domain {domain} already belongs to project {owner[0]!r}")
            _insert(db, "domains", {"domain": domain, "project": project, "added_at": now()})

    def remove_domain(self, project: str, domain: str) -> None:
        with self.transaction() as db:
            if not db.execute("SELECT 1 FROM domains WHERE domain = ? AND project = ?", [domain, project]).fetchone():
                raise StoreError(f"project {project!r} has no domain {domain}", "not_found")
            db.execute("DELETE FROM domains WHERE domain = ?", [domain])

    def scale(self, project: str) -> dict[str, int]:
        rows = self._rows("SELECT service, replicas FROM scale WHERE project = ?", [project])
        return {row["service"]: row["replicas"] for row in rows}

    def set_scale(self, project: str, service: str, replicas: int) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO scale (project, service, replicas) VALUES (?, ?, ?) "
                       "ON CONFLICT (project, service) DO UPDATE SET replicas = excluded.replicas",
                       [project, service, replicas])

    # -- GitHub links and deliveries ----------------------------------------------------------

    def github_link(self, project: str) -> dict | None:
        row = self._one("SELECT * FROM github_links WHERE project = ?", [project])
        return self._opened(row, SEALED_LINK_COLUMNS) if row else None

    def set_github_link(self, link: dict) -> None:
        sealed = {**{"installation_id": 0}, **link,
                  **{column: self.secrets.seal(link.get(column) or "") for column in SEALED_LINK_COLUMNS}}
        with self.transaction() as db:
            db.execute("DELETE FROM github_links WHERE project = ?", [link["project"]])
            _insert(db, "github_links", sealed)

    def all_github_links(self) -> list[dict]:
        """Every link's project, repo, branch and installation (no secrets)."""
        return self._rows("SELECT project, repo, branch, installation_id FROM github_links ORDER BY project")

    def app_links_of_repo(self, repo: str) -> list[dict]:
        """The links made through the GitHub App to that repo (OWNER/NAME, any case)."""
        rows = self._rows("SELECT * FROM github_links WHERE installation_id > 0 AND lower(repo) = lower(?) "
                          "ORDER BY project", [repo])
        return [self._opened(row, SEALED_LINK_COLUMNS) for row in rows]

    def _opened(self, row: dict, columns: tuple[str, ...]) -> dict:
        return {**row, **{column: self.secrets.open(row[column] or "") for column in columns}}

    # -- the GitHub App ------------------------------------------------------------------------

    def github_app(self) -> dict | None:
        row = self._one("SELECT * FROM github_app WHERE key = 'app'")
        return self._opened(row, SEALED_APP_COLUMNS) if row else None

    def add_github_app(self, app: dict) -> None:
        """Store the server's one App; StoreError if it has one (two creations finished at once)."""
        sealed = {**app, "key": "app", **{column: self.secrets.seal(app[column]) for column in SEALED_APP_COLUMNS}}
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM github_app").fetchone():
                raise StoreError("this server has a GitHub App already")
            for table in ("github_installations", "github_installation_repos"):  # a new App starts uninstalled
                db.execute(f"DELETE FROM {table}")
            _insert(db, "github_app", sealed)

    def delete_github_app(self) -> list[str]:
        """Forget the App, its installations and the links made through it; returns those projects."""
        with self.transaction() as db:
            projects = [r[0] for r in db.execute("SELECT project FROM github_links WHERE installation_id > 0")]
            for table in ("github_app", "github_installations", "github_installation_repos"):
                db.execute(f"DELETE FROM {table}")
            db.execute("DELETE FROM github_links WHERE installation_id > 0")
        return projects

    def set_installation(self, installation_id: int, account: str, suspended: bool,
                         repos: list[str] | None = None) -> None:
        """Record an installation; `repos` (when given) replaces the repos it can reach."""
        with self.transaction() as db:
            db.execute("INSERT INTO github_installations (id, account, suspended, updated_at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET account = excluded.account, suspended = excluded.suspended, "
                       "updated_at = excluded.updated_at", [installation_id, account, int(suspended), now()])
            if repos is not None:
                db.execute("DELETE FROM github_installation_repos WHERE installation_id = ?", [installation_id])
                db.executemany("INSERT OR IGNORE INTO github_installation_repos (installation_id, repo) "
                               "VALUES (?, ?)", [(installation_id, repo) for repo in repos])

    def change_installation_repos(self, installation_id: int, added: list[str], removed: list[str]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO github_installation_repos (installation_id, repo) "
                           "VALUES (?, ?)", [(installation_id, repo) for repo in added])
            db.executemany("DELETE FROM github_installation_repos WHERE installation_id = ? AND repo = ?",
                           [(installation_id, repo) for repo in removed])

    def delete_installation(self, installation_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM github_installation_repos WHERE installation_id = ?", [installation_id])
            db.execute("DELETE FROM github_installations WHERE id = ?", [installation_id])

    def forget_delivery(self, delivery: str) -> None:
        """Its handling failed: a redelivery may try again."""
        self._write("DELETE FROM github_deliveries WHERE delivery = ?", [delivery])

    def replace_installations(self, installations: list[tuple[int, str, bool, list[str]]]) -> None:
        """The installations as GitHub lists them now (id, account, suspended, repos), whole."""
        with self.transaction() as db:
            for table in ("github_installations", "github_installation_repos"):
                db.execute(f"DELETE FROM {table}")
        for installation_id, account, suspended, repos in installations:
            self.set_installation(installation_id, account, suspended, repos)

    def installations(self) -> list[dict]:
        """Every installation with the repos it can reach (`repos`, sorted)."""
        rows = self._rows("SELECT * FROM github_installations ORDER BY id")
        repos = self._rows("SELECT * FROM github_installation_repos ORDER BY repo")
        return [{**row, "repos": [r["repo"] for r in repos if r["installation_id"] == row["id"]]} for row in rows]

    def installation_of_repo(self, repo: str) -> dict | None:
        """The installation that can reach the repo (a suspended one too: its `suspended` says)."""
        return self._one("SELECT i.* FROM github_installations i JOIN github_installation_repos r "
                         "ON r.installation_id = i.id WHERE lower(r.repo) = lower(?) ORDER BY i.suspended, i.id "
                         "LIMIT 1", [repo])

    # -- the manifest flows that create the App ----------------------------------------------------

    def add_app_flow(self, flow: dict) -> None:
        """A new manifest flow; flows that expired go."""
        with self.transaction() as db:
            db.execute("DELETE FROM github_app_flows WHERE expires_at < ?", [flow["created_epoch"]])
            _insert(db, "github_app_flows", {k: v for k, v in flow.items() if k != "created_epoch"})

    def app_flow(self, flow_id: str) -> dict | None:
        return self._one("SELECT * FROM github_app_flows WHERE id = ?", [flow_id])

    def claim_app_flow(self, flow_id: str, column: str, expected: int, **changes: object) -> bool:
        """Move a flow on one step (`column` from `expected` to expected + 1) with `changes`, once:
        False if another request got there first (each step is single-use)."""
        assert column in ("started", "finished")
        sets = ", ".join([f"{column} = ?", *(f"{k} = ?" for k in changes)])
        with self.transaction() as db:
            cursor = db.execute(f"UPDATE github_app_flows SET {sets} WHERE id = ? AND {column} = ?",
                                [expected + 1, *changes.values(), flow_id, expected])
            return cursor.rowcount == 1

    def delete_github_link(self, project: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM github_links WHERE project = ?", [project])

    def record_delivery(self, delivery: str, project: str, event: str, result: str,
                        deployment: int | None = None) -> bool:
        """Record a delivery once; False if this delivery id was seen before (a redelivery)."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM github_deliveries WHERE delivery = ?", [delivery]).fetchone():
                return False
            _insert(db, "github_deliveries", {"delivery": delivery, "project": project, "event": event,
                                              "result": result, "deployment": deployment, "received_at": now()})
        return True

    def set_delivery_result(self, delivery: str, result: str, deployment: int | None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE github_deliveries SET result = ?, deployment = ? WHERE delivery = ?",
                       [result, deployment, delivery])

    def deliveries(self, project: str, limit: int = 50) -> list[dict]:
        return self._rows("SELECT * FROM github_deliveries WHERE project = ? "
                          "ORDER BY received_at DESC, rowid DESC LIMIT ?", [project, limit])

    # -- scheduled services ------------------------------------------------------------------

    def add_cron_run(self, run: dict) -> CronRun:
        with self.transaction() as db:
            run = {**run, "id": _insert(db, "cron_runs", run).lastrowid}
        return _from_row(CronRun, run)

    def update_cron_run(self, run_id: int, **changes: object) -> CronRun | None:
        """The run as changed; None if it is gone (its project was deleted)."""
        for column in changes:
            if column not in CRON_RUN_COLUMNS:
                raise ValueError(f"cron_runs has no column {column!r}")
        with self.transaction() as db:
            db.execute(f"UPDATE cron_runs SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?",
                       [*changes.values(), run_id])
        return self.get_cron_run(run_id)

    def get_cron_run(self, run_id: int) -> CronRun | None:
        row = self._one("SELECT * FROM cron_runs WHERE id = ?", [run_id])
        return _from_row(CronRun, row) if row else None

    def cron_runs(self, project: str, service: str, limit: int = 50) -> list[CronRun]:
        rows = self._rows("SELECT * FROM cron_runs WHERE project = ? AND service = ? ORDER BY id DESC LIMIT ?",
                          [project, service, limit])
        return [_from_row(CronRun, row) for row in rows]

    def cron_runs_with_status(self, status: str) -> list[CronRun]:
        return [_from_row(CronRun, row) for row in self._rows("SELECT * FROM cron_runs WHERE status = ?", [status])]

    def cron_state(self, project: str, service: str) -> tuple[str, str] | None:
        """(schedule, last time due that was handled) of a scheduled service, if it was seen."""
        row = self._one("SELECT schedule, last_due FROM cron_state WHERE project = ? AND service = ?",
                        [project, service])
        return (row["schedule"], row["last_due"]) if row else None

    def set_cron_state(self, project: str, service: str, schedule: str, last_due: str) -> None:
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM projects WHERE name = ?", [project]).fetchone():  # not deleted meanwhile
                db.execute("INSERT INTO cron_state (project, service, schedule, last_due) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (project, service) DO UPDATE SET schedule = excluded.schedule, "
                           "last_due = excluded.last_due", [project, service, schedule, last_due])

    # -- API keys --------------------------------------------------------------------------

    def add_api_key(self, user: str, label: str, digest: str, prefix: str, expires_at: str) -> ApiKey:
        row: dict[str, object] = {"user": user, "label": label, "digest": digest, "prefix": prefix, "created_at": now(),
               "last_used_at": "", "expires_at": expires_at, "revoked_at": ""}
        with self.transaction() as db:
            self._require_user(db, user)
            row["id"] = _insert(db, "api_keys", row).lastrowid
        return _from_row(ApiKey, row)

    def api_key_by_digest(self, digest: str) -> tuple[ApiKey, User] | None:
        """The key with that digest and its user (read on every API request: kept, see _cached)."""
        return self._cached("access", ("api_key_by_digest", digest), lambda: self._api_key_by_digest(digest))

    def _api_key_by_digest(self, digest: str) -> tuple[ApiKey, User] | None:
        row = self._one("SELECT k.*, u.role AS user_role, u.created_at AS user_created_at FROM api_keys k "
                        "JOIN users u ON u.name = k.user WHERE k.digest = ?", [digest])
        if row is None:
            return None
        return _from_row(ApiKey, row), User(row["user"], row["user_role"], row["user_created_at"])

    def get_api_key(self, key_id: int) -> ApiKey | None:
        row = self._one("SELECT * FROM api_keys WHERE id = ?", [key_id])
        return _from_row(ApiKey, row) if row else None

    def list_api_keys(self, user: str | None = None) -> list[ApiKey]:
        if user:
            rows = self._rows("SELECT * FROM api_keys WHERE user = ? ORDER BY id", [user])
        else:
            rows = self._rows("SELECT * FROM api_keys ORDER BY id")
        return [_from_row(ApiKey, row) for row in rows]

    def touch_api_key(self, key_id: int, at: str) -> None:
        self._write("UPDATE api_keys SET last_used_at = ? WHERE id = ?", [at, key_id])

    def revoke_api_key(self, key_id: int, at: str) -> None:
        with self.transaction(durable=True) as db:
            db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", [at, key_id])

    # -- dashboard sessions ----------------------------------------------------------------

    def add_session(self, user: str, api_key_id: int, digest: str, expires_at: str, address: str,
                    agent: str) -> Session:
        at = now()
        row: dict[str, object] = {"user": user, "api_key_id": api_key_id, "digest": digest, "created_at": at,
                                  "expires_at": expires_at, "last_seen_at": at, "address": address,
                                  "agent": agent, "ended_at": ""}
        with self.transaction() as db:
            self._require_user(db, user)
            row["id"] = _insert(db, "sessions", row).lastrowid
        return _from_row(Session, row)

    def session_by_digest(self, digest: str) -> tuple[Session, ApiKey, User] | None:
        """The session with that digest, the key it came from and its user (read on every page)."""
        return self._cached("access", ("session_by_digest", digest), lambda: self._session_by_digest(digest))

    def _session_by_digest(self, digest: str) -> tuple[Session, ApiKey, User] | None:
        row = self._one("SELECT * FROM sessions WHERE digest = ?", [digest])
        if row is None:
            return None
        key = self._one("SELECT * FROM api_keys WHERE id = ?", [row["api_key_id"]])
        user = self._one("SELECT * FROM users WHERE name = ?", [row["user"]])
        if key is None or user is None:
            return None
        return _from_row(Session, row), _from_row(ApiKey, key), _from_row(User, user)

    def get_session(self, session_id: int) -> Session | None:
        row = self._one("SELECT * FROM sessions WHERE id = ?", [session_id])
        return _from_row(Session, row) if row else None

    def list_sessions(self, user: str | None = None, include_ended: bool = False) -> list[Session]:
        where = [] if include_ended else ["ended_at = ''"]
        args: list = []
        if user:
            where.append("user = ?")
            args.append(user)
        sql = "SELECT * FROM sessions" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id"
        return [_from_row(Session, row) for row in self._rows(sql, args)]

    def touch_session(self, session_id: int, at: str, expires_at: str) -> None:
        self._write("UPDATE sessions SET last_seen_at = ?, expires_at = ? WHERE id = ?", [at, expires_at, session_id])

    def end_session(self, session_id: int, at: str) -> None:
        with self.transaction(durable=True) as db:  # no power loss brings a signed-out session back
            db.execute("UPDATE sessions SET ended_at = ? WHERE id = ? AND ended_at = ''", [at, session_id])

    def forget_old_sessions(self, before: str) -> None:
        """Sessions and links expired or ended before `before` are of no use to anyone now."""
        with self.transaction() as db:
            db.execute("DELETE FROM sessions WHERE expires_at < ? OR (ended_at != '' AND ended_at < ?)",
                       [before, before])
            db.execute("DELETE FROM sign_in_links WHERE expires_at < ?", [before])

    def add_sign_in_link(self, user: str, api_key_id: int, digest: str, expires_at: str) -> None:
        with self.transaction() as db:
            self._require_user(db, user)
            _insert(db, "sign_in_links", {"digest": digest, "user": user, "api_key_id": api_key_id,
                                          "expires_at": expires_at, "used_at": ""})

    def take_sign_in_link(self, digest: str, at: str) -> tuple[str, int] | None:
        """(user, api key id) of an unused, unexpired link, which is used up by this call: a
        link opened twice signs in once."""
        with self.transaction() as db:
            row = db.execute("SELECT user, api_key_id FROM sign_in_links WHERE digest = ? AND used_at = '' "
                             "AND expires_at > ?", [digest, at]).fetchone()
            if row is None:
                return None
            db.execute("UPDATE sign_in_links SET used_at = ? WHERE digest = ?", [at, digest])
        return str(row[0]), int(row[1])

    # -- audit log -------------------------------------------------------------------------

    def audit(self, user: str, action: str, target: str = "", detail: str = "") -> None:
        self._write("INSERT INTO audit (at, user, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                    [now(), user, action, target, detail])

    def audit_log(self, limit: int = 100, target: str | None = None, *, user: str | None = None,
                  action: str | None = None) -> list[dict]:
        """The newest `limit` records, newest first, of those matching every filter given: who
        did it (`user`), to what (`target`), and `action` exactly or, named without a ':', its
        whole group ("apikeys" is apikeys:create, apikeys:revoke, ...)."""
        where: list[str] = []
        args: list = []
        if user:
            where.append("user = ?")
            args.append(user)
        if target:
            where.append("target = ?")
            args.append(target)
        if action and ":" in action:
            where.append("action = ?")
            args.append(action)
        elif action:
            where.append("(action = ? OR substr(action, 1, ?) = ?)")
            args += [action, len(action) + 1, f"{action}:"]
        sql = "SELECT * FROM audit" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?"
        return self._rows(sql, [*args, limit])

    @staticmethod
    def _require_user(db: sqlite3.Connection, name: str) -> None:
        if not db.execute("SELECT 1 FROM users WHERE name = ?", [name]).fetchone():
            raise StoreError(f"no user named {name!r}", "not_found")


# Per thread and group of tables, at most so many reads are kept (then all go).
READ_CACHE_ENTRIES = 256


class _Checkpointer:
    """The thread that copies the daemon's WAL into the database (Store.checkpoint_in_background):
    after `after_commits` commits, or every `every` seconds if anything was committed."""

    def __init__(self, conn: sqlite3.Connection, after_commits: int, every: float) -> None:
        self._conn = conn
        self._after_commits = after_commits
        self._every = every
        self._pending = 0  # commits since the last checkpoint began (a lost count only waits for the timer)
        self._wanted = threading.Event()
        self._stopping = False
        self._failing = False  # the last checkpoint failed (said in the log once)
        self._thread = threading.Thread(target=self._run, name="store-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        self._pending += 1
        if self._pending >= self._after_commits:
            self._wanted.set()

    def stop(self) -> None:
        self._stopping = True
        self._wanted.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopping:
            self._wanted.wait(self._every)
            self._wanted.clear()
            if self._pending:
                self._pending = 0
                try:  # PASSIVE: copies what no reader still needs, never waits for anyone
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as err:  # a full disk, say: the next round tries again
                    if not self._failing:  # said once, not every second until it works again
                        log.warning("could not copy the store's WAL into its database: %s", err)
                    self._failing = True
                else:
                    if self._failing:
                        log.info("the store's WAL is copied into its database again")
                    self._failing = False
        self._conn.close()


class _Reader:
    """A thread's read-only connection, and what Store._cached kept of each group of tables."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        conn.row_factory = None  # plain tuples: _fetch makes the dicts, faster than from sqlite3.Row
        self.conn = conn
        self.caches: dict[str, tuple[int, dict[Hashable, Any]]] = {}  # group -> (its counter, key -> value)


def _fetch(conn: sqlite3.Connection, sql: str, args: list | tuple) -> list[dict]:
    cursor = conn.execute(sql, args)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


DEPLOYMENT_COLUMNS = {f.name for f in fields(Deployment)}
CRON_RUN_COLUMNS = {f.name for f in fields(CronRun)}


def _insert(db: sqlite3.Connection, table: str, row: dict) -> sqlite3.Cursor:
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    return db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values()))
