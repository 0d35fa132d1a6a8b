"""Image tags and the build check through the real Deployer on the fake engine: tags are random and
read from the records, images with the old `:<number>` tags still roll back and prune, and a
Dockerfile naming another project's image fails before any build."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_deploy_stages import Rig, git

from hooks import deployment
from runtime.dockerfile import cache_namespace
from runtime.store import DeploymentStatus


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    monkeypatch.setattr(deployment, "UPSTREAM_REFRESH_SECONDS", 0)
    return Rig(tmp_path)


def test_old_number_tags_roll_back_and_prune(rig: Rig):
    first = rig.deploy()
    rig.engine.images["fake-shop:1"] = rig.engine.images.pop(first.image)  # as made before tags were random
    rig.store.update_deployment("shop", 1, image="fake-shop:1")
    rig.deploy()
    ticket = rig.deployer.enqueue("shop", first.commit_sha, "main", "alice", "rollback", image="fake-shop:1",
                                  rollback_of=1)
    final = ticket.wait(30)
    assert final is not None and final.status == DeploymentStatus.LIVE, final
    assert final.image.startswith("fake-shop:3-") and "reusing image of fake-shop:1" in rig.log(final)
    rig.deploy()  # keep_images = 2: #3 and #4 stay, the old-style tag of #1 goes
    assert sorted(rig.engine.project_images("shop")) == [3, 4]
    assert "fake-shop:1" not in rig.engine.images


def test_another_projects_image_fails_the_deploy_before_building(rig: Rig):
    rig.engine.images["fake-other:1-abc"] = rig.engine.labels(project="other", deployment="1")
    rig.sha = rig.commit({"Dockerfile": "FROM scratch\nCOPY --from=fake-other:1-abc /s /s\n"})
    git("-C", str(rig.bare), "fetch", "-q", str(rig.work), "main:main")
    final = rig.deploy()
    assert final.status == DeploymentStatus.FAILED
    assert final.reason == "Dockerfile line 2: COPY --from=fake-other:1-abc: images of other projects cannot be used"
    assert [c for c in rig.engine.calls if c[0] == "build"] == []


def test_the_build_gets_private_cache_ids(rig: Rig):
    rig.sha = rig.commit({"Dockerfile": "FROM scratch\nRUN --mount=type=cache,id=shared,target=/c true\n"})
    git("-C", str(rig.bare), "fetch", "-q", str(rig.work), "main:main")
    assert rig.deploy().status == DeploymentStatus.LIVE
    key = (rig.settings.data_dir / "build_cache_key").read_bytes()  # made by the first build, kept
    namespace = cache_namespace("fake", "shop", key)
    assert rig.engine.built_dockerfiles == [f"FROM scratch\nRUN --mount=type=cache,target=/c,id={namespace}/shared true\n"]
