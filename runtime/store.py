"""The state store: users, grants, SSH keys, projects and the audit log in SQLite.

One connection per store, shared by the daemon's threads behind a lock (sqlite-utils binds a
`Database` to its creating thread unless given a connection made with check_same_thread=False).
WAL mode lets the `disco` command on the server's shell write while the daemon reads.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

ROLES = ("admin", "deployer")


class StoreError(Exception):
    """A change the store refused; the message names the problem for the person who asked.

    `kind` is "not_found" or "conflict", so front doors can answer with the right status.
    """

    def __init__(self, message: str, kind: str = "conflict") -> None:
        super().__init__(message)
        self.kind = kind


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
class SSHKey:
    fingerprint: str
    user: str
    key_type: str
    public_key: str  # "<type> <base64>" without the comment
    comment: str
    added_at: str


def _from_row(cls, row: dict):  # type: ignore[no-untyped-def]
    """Build a record from a row, ignoring columns that later migrations added."""
    return cls(**{f.name: row[f.name] for f in fields(cls)})


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _migration_1_team(db: sqlite_utils.Database) -> None:
    db["users"].create({"name": str, "role": str, "created_at": str}, pk="name")
    db["grants"].create(
        {"user": str, "project": str, "granted_at": str},
        pk=("user", "project"),
        foreign_keys=[("user", "users", "name")],
    )
    db["ssh_keys"].create(
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
    db["ssh_keys"].create_index(["user"])
    db["projects"].create(
        {"name": str, "created_at": str, "created_by": str, "deploy_branch": str},
        pk="name",
    )
    db["audit"].create(
        {"id": int, "at": str, "user": str, "action": str, "target": str, "detail": str},
        pk="id",
    )


def _migration_2_deploys(db: sqlite_utils.Database) -> None:
    db["deployments"].create(
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
    db["deployments"].create_index(["project", "number"], unique=True)
    db["deployments"].create_index(["status"])
    db["env_vars"].create(
        {"project": str, "name": str, "value": str, "updated_at": str}, pk=("project", "name")
    )
    db["domains"].create({"domain": str, "project": str, "added_at": str}, pk="domain")
    db["scale"].create({"project": str, "service": str, "replicas": int}, pk=("project", "service"))


def _migration_3_api_keys(db: sqlite_utils.Database) -> None:
    db["api_keys"].create(
        {
            "id": int, "user": str, "label": str, "digest": str, "prefix": str, "created_at": str,
            "last_used_at": str, "expires_at": str, "revoked_at": str,
        },
        pk="id",
        foreign_keys=[("user", "users", "name")],
    )
    db["api_keys"].create_index(["digest"], unique=True)


def _migration_4_github(db: sqlite_utils.Database) -> None:
    db["github_links"].create(
        {
            "project": str, "repo": str, "branch": str, "clone_url": str, "secret": str, "token": str,
            "deploy_key": str, "force_mirror": int, "created_at": str,
        },
        pk="project",
    )
    db["github_deliveries"].create(
        {"delivery": str, "project": str, "event": str, "result": str, "deployment": int, "received_at": str},
        pk="delivery",
    )
    db["github_deliveries"].create_index(["project"])
    db["deployments"].add_column("delivery", str)


# Applied in order on every open; PRAGMA user_version records how many have run.
# Append new steps; never edit a released one.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _migration_1_team, _migration_2_deploys, _migration_3_api_keys, _migration_4_github,
]

# A deployment's life: queued -> building -> starting -> live, or failed / superseded on the
# way; a live one becomes rolled_back or replaced when another goes live.
ACTIVE_STATUSES = ("queued", "building", "starting")


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        conn = sqlite3.connect(path, check_same_thread=False, timeout=10, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        self._conn = conn
        self._lock = threading.RLock()
        self.db = sqlite_utils.Database(conn)
        self.migrate()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """Serialise access from threads and make a group of writes all-or-nothing."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def migrate(self, upto: int | None = None) -> None:
        target = len(MIGRATIONS) if upto is None else upto
        with self.transaction() as db:
            done = db.execute("PRAGMA user_version").fetchone()[0]
            for index in range(done, target):
                MIGRATIONS[index](db)
                db.execute(f"PRAGMA user_version={index + 1}")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self.db.execute("PRAGMA user_version").fetchone()[0]

    # -- users -----------------------------------------------------------------------------

    def add_user(self, name: str, role: str) -> User:
        if role not in ROLES:
            raise StoreError(f"unknown role {role!r}: use one of {', '.join(ROLES)}", "bad_request")
        with self.transaction() as db:
            if db["users"].count_where("name = ?", [name]):
                raise StoreError(f"user {name!r} already exists")
            row = {"name": name, "role": role, "created_at": now()}
            db["users"].insert(row)
        return _from_row(User, row)

    def get_user(self, name: str) -> User | None:
        with self._lock:
            rows = list(self.db["users"].rows_where("name = ?", [name]))
        return _from_row(User, rows[0]) if rows else None

    def list_users(self) -> list[User]:
        with self._lock:
            return [_from_row(User, row) for row in self.db["users"].rows_where(order_by="name")]

    def remove_user(self, name: str) -> None:
        """Remove a user with their keys and grants: a departed member loses access at once."""
        with self.transaction() as db:
            if not db["users"].count_where("name = ?", [name]):
                raise StoreError(f"no user named {name!r}", "not_found")
            db.execute("DELETE FROM ssh_keys WHERE user = ?", [name])
            db.execute("DELETE FROM api_keys WHERE user = ?", [name])
            db.execute("DELETE FROM grants WHERE user = ?", [name])
            db.execute("DELETE FROM users WHERE name = ?", [name])

    def count_admins(self) -> int:
        with self._lock:
            return self.db["users"].count_where("role = 'admin'")

    # -- grants ----------------------------------------------------------------------------

    def grant(self, user: str, project: str) -> None:
        with self.transaction() as db:
            self._require_user(db, user)
            db["grants"].insert(
                {"user": user, "project": project, "granted_at": now()}, ignore=True
            )

    def revoke(self, user: str, project: str) -> None:
        with self.transaction() as db:
            self._require_user(db, user)
            if not db["grants"].count_where("user = ? AND project = ?", [user, project]):
                raise StoreError(f"user {user!r} has no grant on project {project!r}", "not_found")
            db.execute("DELETE FROM grants WHERE user = ? AND project = ?", [user, project])

    def grants_of(self, user: str) -> list[str]:
        with self._lock:
            rows = self.db["grants"].rows_where("user = ?", [user], order_by="project")
            return [row["project"] for row in rows]

    def has_grant(self, user: str, project: str) -> bool:
        with self._lock:
            return bool(self.db["grants"].count_where("user = ? AND project = ?", [user, project]))

    # -- SSH keys --------------------------------------------------------------------------

    def add_ssh_key(self, key: SSHKey) -> None:
        with self.transaction() as db:
            self._require_user(db, key.user)
            owner = db.execute(
                "SELECT user FROM ssh_keys WHERE fingerprint = ?", [key.fingerprint]
            ).fetchone()
            if owner:
                raise StoreError(
                    f"key {key.fingerprint} is already registered to user {owner[0]!r}"
                )
            db["ssh_keys"].insert(key.__dict__)

    def user_for_key(self, fingerprint: str) -> User | None:
        with self._lock:
            row = self.db.execute(
                "SELECT u.name, u.role, u.created_at FROM ssh_keys k "
                "JOIN users u ON u.name = k.user WHERE k.fingerprint = ?",
                [fingerprint],
            ).fetchone()
        return User(*row) if row else None

    def list_ssh_keys(self, user: str | None = None) -> list[SSHKey]:
        where, args = ("user = ?", [user]) if user else (None, None)
        with self._lock:
            rows = self.db["ssh_keys"].rows_where(where, args, order_by="user, added_at")
            return [_from_row(SSHKey, row) for row in rows]

    def remove_ssh_key(self, fingerprint: str) -> SSHKey:
        with self.transaction() as db:
            rows = list(db["ssh_keys"].rows_where("fingerprint = ?", [fingerprint]))
            if not rows:
                raise StoreError(f"no SSH key with fingerprint {fingerprint}", "not_found")
            db.execute("DELETE FROM ssh_keys WHERE fingerprint = ?", [fingerprint])
        return _from_row(SSHKey, rows[0])

    # -- projects --------------------------------------------------------------------------

    def get_project(self, name: str) -> dict | None:
        with self._lock:
            rows = list(self.db["projects"].rows_where("name = ?", [name]))
        return rows[0] if rows else None

    def add_project(self, name: str, created_by: str, deploy_branch: str = "main") -> dict:
        row = {
            "name": name,
            "created_at": now(),
            "created_by": created_by,
            "deploy_branch": deploy_branch,
        }
        with self.transaction() as db:
            db["projects"].insert(row, ignore=True)
        return self.get_project(name) or row

    def delete_project(self, name: str) -> None:
        """Forget a project and everything recorded about it (grants too: a new project of the
        same name later must not inherit them)."""
        with self.transaction() as db:
            for table in ("domains", "env_vars", "scale", "deployments", "github_links", "github_deliveries"):
                db.execute(f"DELETE FROM {table} WHERE project = ?", [name])
            db.execute("DELETE FROM grants WHERE project = ?", [name])
            db.execute("DELETE FROM projects WHERE name = ?", [name])

    def list_projects(self) -> list[dict]:
        with self._lock:
            return list(self.db["projects"].rows_where(order_by="name"))

    # -- deployments -----------------------------------------------------------------------

    def create_deployment(
        self, project: str, commit_sha: str, branch: str, user: str, source: str,
        log_dir: Path, image: str = "", rollback_of: int | None = None, delivery: str = "",
    ) -> Deployment:
        with self.transaction() as db:
            last = db.execute(
                "SELECT COALESCE(MAX(number), 0) FROM deployments WHERE project = ?", [project]
            ).fetchone()[0]
            number = last + 1
            row = {
                "project": project, "number": number, "commit_sha": commit_sha, "branch": branch,
                "user": user, "source": source, "status": "queued", "reason": "", "image": image,
                "rollback_of": rollback_of, "web_port": 0, "timings": "{}", "delivery": delivery,
                "log_path": str(log_dir / project / f"{number}.log"),
                "created_at": now(), "finished_at": "",
            }
            db["deployments"].insert(row)
        return _from_row(Deployment, row)

    def update_deployment(self, project: str, number: int, **changes: object) -> Deployment:
        with self.transaction() as db:
            db.execute(
                f"UPDATE deployments SET {', '.join(f'{k} = ?' for k in changes)} "
                "WHERE project = ? AND number = ?",
                [*changes.values(), project, number],
            )
        found = self.get_deployment(project, number)
        assert found is not None
        return found

    def get_deployment(self, project: str, number: int) -> Deployment | None:
        with self._lock:
            rows = list(self.db["deployments"].rows_where("project = ? AND number = ?", [project, number]))
        return _from_row(Deployment, rows[0]) if rows else None

    def list_deployments(self, project: str, limit: int = 50) -> list[Deployment]:
        with self._lock:
            rows = self.db["deployments"].rows_where("project = ?", [project], order_by="number desc", limit=limit)
            return [_from_row(Deployment, row) for row in rows]

    def live_deployment(self, project: str) -> Deployment | None:
        with self._lock:
            rows = list(self.db["deployments"].rows_where(
                "project = ? AND status = 'live'", [project], order_by="number desc", limit=1))
        return _from_row(Deployment, rows[0]) if rows else None

    def deployments_with_status(self, statuses: tuple[str, ...]) -> list[Deployment]:
        marks = ", ".join("?" for _ in statuses)
        with self._lock:
            rows = self.db["deployments"].rows_where(f"status IN ({marks})", list(statuses), order_by="id")
            return [_from_row(Deployment, row) for row in rows]

    # -- env vars, domains, scale ----------------------------------------------------------

    def env(self, project: str) -> dict[str, str]:
        with self._lock:
            rows = self.db["env_vars"].rows_where("project = ?", [project], order_by="name")
            return {row["name"]: row["value"] for row in rows}

    def set_env(self, project: str, values: dict[str, str]) -> None:
        with self.transaction() as db:
            db["env_vars"].upsert_all(
                [{"project": project, "name": k, "value": v, "updated_at": now()} for k, v in values.items()],
                pk=("project", "name"),
            )

    def unset_env(self, project: str, names: list[str]) -> None:
        with self.transaction() as db:
            for name in names:
                db.execute("DELETE FROM env_vars WHERE project = ? AND name = ?", [project, name])

    def domains(self, project: str | None = None) -> list[dict]:
        where, args = ("project = ?", [project]) if project else (None, None)
        with self._lock:
            return list(self.db["domains"].rows_where(where, args, order_by="domain"))

    def add_domain(self, project: str, domain: str) -> None:
        with self.transaction() as db:
            owner = db.execute("SELECT project FROM domains WHERE domain = ?", [domain]).fetchone()
            if owner:
                raise StoreError(f"domain {domain} already belongs to project {owner[0]!r}")
            db["domains"].insert({"domain": domain, "project": project, "added_at": now()})

    def remove_domain(self, project: str, domain: str) -> None:
        with self.transaction() as db:
            if not db["domains"].count_where("domain = ? AND project = ?", [domain, project]):
                raise StoreError(f"project {project!r} has no domain {domain}", "not_found")
            db.execute("DELETE FROM domains WHERE domain = ?", [domain])

    def scale(self, project: str) -> dict[str, int]:
        with self._lock:
            rows = self.db["scale"].rows_where("project = ?", [project])
            return {row["service"]: row["replicas"] for row in rows}

    def set_scale(self, project: str, service: str, replicas: int) -> None:
        with self.transaction() as db:
            db["scale"].upsert({"project": project, "service": service, "replicas": replicas},
                               pk=("project", "service"))

    # -- GitHub links and deliveries ----------------------------------------------------------

    def github_link(self, project: str) -> dict | None:
        with self._lock:
            rows = list(self.db["github_links"].rows_where("project = ?", [project]))
        return rows[0] if rows else None

    def set_github_link(self, link: dict) -> None:
        with self.transaction() as db:
            db["github_links"].upsert(link, pk="project")

    def delete_github_link(self, project: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM github_links WHERE project = ?", [project])

    def record_delivery(self, delivery: str, project: str, event: str, result: str,
                        deployment: int | None = None) -> bool:
        """Record a delivery once; False if this delivery id was seen before (a redelivery)."""
        with self.transaction() as db:
            if db["github_deliveries"].count_where("delivery = ?", [delivery]):
                return False
            db["github_deliveries"].insert({"delivery": delivery, "project": project, "event": event,
                                            "result": result, "deployment": deployment, "received_at": now()})
        return True

    def deliveries(self, project: str, limit: int = 50) -> list[dict]:
        with self._lock:
            return list(self.db["github_deliveries"].rows_where(
                "project = ?", [project], order_by="received_at desc, rowid desc", limit=limit))

    # -- API keys --------------------------------------------------------------------------

    def add_api_key(self, user: str, label: str, digest: str, prefix: str, expires_at: str) -> ApiKey:
        with self.transaction() as db:
            self._require_user(db, user)
            row = {"user": user, "label": label, "digest": digest, "prefix": prefix, "created_at": now(),
                   "last_used_at": "", "expires_at": expires_at, "revoked_at": ""}
            row["id"] = db["api_keys"].insert(row).last_pk
        return _from_row(ApiKey, row)

    def api_key_by_digest(self, digest: str) -> tuple[ApiKey, User] | None:
        with self._lock:
            rows = list(self.db["api_keys"].rows_where("digest = ?", [digest]))
            if not rows:
                return None
            user = list(self.db["users"].rows_where("name = ?", [rows[0]["user"]]))
        return (_from_row(ApiKey, rows[0]), _from_row(User, user[0])) if user else None

    def get_api_key(self, key_id: int) -> ApiKey | None:
        with self._lock:
            rows = list(self.db["api_keys"].rows_where("id = ?", [key_id]))
        return _from_row(ApiKey, rows[0]) if rows else None

    def list_api_keys(self, user: str | None = None) -> list[ApiKey]:
        where, args = ("user = ?", [user]) if user else (None, None)
        with self._lock:
            return [_from_row(ApiKey, r) for r in self.db["api_keys"].rows_where(where, args, order_by="id")]

    def touch_api_key(self, key_id: int, at: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", [at, key_id])

    def revoke_api_key(self, key_id: int, at: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", [at, key_id])

    # -- audit log -------------------------------------------------------------------------

    def audit(self, user: str, action: str, target: str = "", detail: str = "") -> None:
        with self.transaction() as db:
            db["audit"].insert(
                {"at": now(), "user": user, "action": action, "target": target, "detail": detail}
            )

    def audit_log(self, limit: int = 100, target: str | None = None) -> list[dict]:
        where, args = ("target = ?", [target]) if target else (None, None)
        with self._lock:
            return list(self.db["audit"].rows_where(where, args, order_by="id desc", limit=limit))

    @staticmethod
    def _require_user(db: sqlite_utils.Database, name: str) -> None:
        if not db["users"].count_where("name = ?", [name]):
            raise StoreError(f"no user named {name!r}", "not_found")
