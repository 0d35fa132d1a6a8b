"""Docker's disk use per project, for the server page: the summing of Docker's data usage JSON
(GET /system/df), as data."""

from __future__ import annotations

from runtime.docker_engine import DiskUse, ProjectDisk, disk_use_of


def image(project: str | None, size: int, shared: int, instance: str = "disco", **extra: object) -> dict:
    """One entry of df's Images, as Docker 20.10 (API 1.41) gives it, trimmed of what is not read."""
    labels = {"disco.instance": instance, "disco.project": project, "disco.deployment": "1"} if project else None
    return {"Id": f"sha256:{size:064x}", "Labels": labels, "RepoTags": [f"{instance}-{project}:1-ab12"],
            "Size": size, "SharedSize": shared, "VirtualSize": size, "Containers": 1, **extra}


def volume(project: str | None, size: int, instance: str = "disco") -> dict:
    labels = {"disco.instance": instance, "disco.project": project} if project else {}
    return {"Name": f"{instance}-{project}-data", "Driver": "local", "Labels": labels, "Scope": "local",
            "UsageData": {"RefCount": 1, "Size": size}}


DF = {
    "LayersSize": 50_000_000,
    "Images": [
        image("shop", 2_000_000, 1_500_000),  # two deployments sharing a base layer
        image("shop", 2_100_000, 1_500_000),
        image("blog", 800, 0),
        image("shop", 9_999, 0, instance="other"),  # another Disco on the same Docker
        image(None, 40_000_000, 0),  # a base image, or the proxy's: nobody's project
        {"Id": "sha256:ff", "Labels": {"disco.instance": "disco"}, "Size": 5, "SharedSize": 0},  # the instance's, no project
    ],
    "Volumes": [
        volume("shop", 4096),
        volume("shop", -1),  # not measured
        volume("wiki", 100),  # a project with a volume and no image
        volume("shop", 7, instance="other"),
        volume(None, 1_000),
        {"Name": "bare", "Driver": "local", "Labels": None, "UsageData": None},
    ],
    "BuildCache": [
        {"ID": "a", "Type": "regular", "Shared": False, "Size": 300},
        {"ID": "b", "Type": "regular", "Shared": True, "Size": 1_000},  # also a layer of an image: not cache's own
    ],
    "Containers": [],
}


def test_images_and_volumes_are_summed_per_project_of_this_instance():
    assert disk_use_of(DF, "disco") == DiskUse(
        projects=[
            ProjectDisk("blog", images=1, image_bytes=800, unique_bytes=800, volumes=0, volume_bytes=0),
            ProjectDisk("shop", images=2, image_bytes=4_100_000, unique_bytes=1_100_000, volumes=2, volume_bytes=4096),
            ProjectDisk("wiki", images=0, image_bytes=0, unique_bytes=0, volumes=1, volume_bytes=100),
        ],
        layers_bytes=50_000_000,
        build_cache_bytes=300,
    )


def test_another_instance_sees_only_its_own():
    found = disk_use_of(DF, "other")
    assert found.projects == [ProjectDisk("shop", 1, 9_999, 9_999, 1, 7)]


def test_sizes_docker_did_not_compute_count_nothing():
    """SharedSize is -1 when Docker skipped it, and an older Docker may leave fields out."""
    odd = {"Images": [image("shop", 500, -1), {"Labels": {"disco.instance": "disco", "disco.project": "shop"}}],
           "Volumes": None, "BuildCache": None}
    assert disk_use_of(odd, "disco") == DiskUse([ProjectDisk("shop", 2, 500, 500, 0, 0)], 0, 0)
    assert disk_use_of({}, "disco") == DiskUse([], 0, 0)
