"""The receive pipeline's rules, without any network: names, access, ref checks, after-receive."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import head, make_repo, run

from hooks import pipeline
from hooks.pipeline import ZERO_SHA, RefUpdate
from hooks.policy import Access, PolicyError, authorize, project_from_path
from hooks.platform import Platform
from runtime.caddy import CaddyAdmin
from runtime.docker_engine import Engine
from runtime.settings import Settings
from runtime.store import Store


@pytest.mark.parametrize("path, name", [("/myapp.git", "myapp"), ("myapp", "myapp"), ("/my-app-2", "my-app-2"),
                                         ("a", "a"), ("a" * 63, "a" * 63)])
def test_valid_paths(path: str, name: str):
    assert project_from_path(path) == name


@pytest.mark.parametrize("path", ["", "/", ".git", "../x", "//x", "x/y", "X", "é", "a b", "a\nb", "a\x00b",
                                  "-a", "9a", "a" * 64, "a_b", "a.b"])
def test_invalid_paths(path: str):
    with pytest.raises(PolicyError, match="lowercase DNS label"):
        project_from_path(path)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "disco.sqlite3")
    store.add_user("ann", "admin")
    store.add_user("bob", "deployer")
    return store


def test_authorize_matrix(store: Store):
    ann, bob = store.get_user("ann"), store.get_user("bob")
    assert authorize(store, ann, "new", Access.WRITE) is False  # admin may create
    with pytest.raises(PolicyError, match="does not exist"):
        authorize(store, ann, "new", Access.READ)
    store.add_project("shop", "ann")
    assert authorize(store, ann, "shop", Access.READ) is True
    with pytest.raises(PolicyError, match="no access"):
        authorize(store, bob, "shop", Access.READ)
    store.grant("bob", "shop")
    assert authorize(store, bob, "shop", Access.WRITE) is True
    store.grant("bob", "later")
    with pytest.raises(PolicyError, match="only admins can create"):
        authorize(store, bob, "later", Access.WRITE)


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failure: str | None = None

    def say(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, reason: str) -> None:
        self.failure = reason


@pytest.fixture
def platform(store: Store, tmp_path: Path) -> Platform:
    # Nothing here reaches Docker or Caddy: the engine connects lazily, on first use.
    settings = Settings(data_dir=tmp_path)
    return Platform.create(settings, store, Engine("unit"), CaddyAdmin(tmp_path))


def test_ref_checks(platform: Platform):
    def update(ref: str, new: str = "a" * 40) -> RefUpdate:
        return RefUpdate("shop", ref, "b" * 40, new, "ann")

    assert pipeline.check_ref_update(platform, update("refs/heads/topic")) is None
    assert pipeline.check_ref_update(platform, update("refs/tags/v1")) is None
    assert "only branches and tags" in pipeline.check_ref_update(platform, update("refs/notes/x"))
    assert "cannot be deleted" in pipeline.check_ref_update(platform, update("refs/heads/main", ZERO_SHA))
    assert pipeline.check_ref_update(platform, update("refs/heads/topic", ZERO_SHA)) is None


def test_after_receive_records_project_and_reports(platform: Platform, store: Store):
    reporter = Recorder()
    updates = [RefUpdate("shop", "refs/heads/dev", ZERO_SHA, "1a2b3c4" + "0" * 33, "ann"),
               RefUpdate("shop", "refs/heads/old", "c" * 40, ZERO_SHA, "ann")]
    assert pipeline.after_receive(platform, updates, reporter) == []
    assert reporter.lines == ["created project shop", "dev -> 1a2b3c4 stored (only main deploys)", "old deleted"]
    assert reporter.failure is None
    assert store.get_project("shop")["created_by"] == "ann"
    assert [row["action"] for row in store.audit_log()] == ["push", "push", "projects:create"]


def test_a_dockerfile_path_spelled_with_dots_is_found(platform: Platform, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    work = tmp_path / "work"
    make_repo(work, {"Dockerfile": "FROM scratch\n", "tools/Dockerfile": "FROM scratch\n",
                           "disco.toml": '[build]\ndockerfile = "./Dockerfile"\n'
                                         '[images.tools]\ndockerfile = "tools/./Dockerfile"\n'
                                         '[services.web]\n[services.worker]\nimage = "tools"\n'})
    run(["git", "clone", "-q", "--bare", str(work), str(platform.repo_path("shop"))], check=True)
    monkeypatch.setattr(platform.engine, "reachable", lambda: True)
    update = RefUpdate("shop", "refs/heads/main", ZERO_SHA, head(work), "ann")
    assert pipeline.check_ref_update(platform, update) is None
