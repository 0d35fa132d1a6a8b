"""CPU and memory per service from Docker's stats: the reading of its JSON, as data; then a real
service's usage through the Engine and the hooks."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import api_platform, require_docker, wait_for
from hooks import operations
from hooks.errors import Refused
from runtime.docker_engine import (
    ContainerSample,
    CpuCounters,
    Engine,
    ServiceSpec,
    ServiceUsage,
    cpu_percent,
    service_usages,
    stats_sample,
)
from runtime.docker_specs import Attachment, TaskLimits
from runtime.settings import Settings

# The shape of GET /containers/{id}/stats?stream=false&one-shot=true on Docker 20.10 with cgroup
# v1 (recorded here, trimmed of fields nothing reads): one_shot leaves precpu_stats empty.
CGROUP_V1 = {
    "read": "2026-12-02T11:23:37.682743941Z",
    "preread": "0001-01-01T00:00:00Z",
    "num_procs": 0,
    "cpu_stats": {
        "cpu_usage": {"total_usage": 4682696552, "percpu_usage": [1714137061, 2968559491],
                      "usage_in_kernelmode": 20000000, "usage_in_usermode": 4660000000},
        "system_cpu_usage": 2061160000000,
        "online_cpus": 2,
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    },
    "precpu_stats": {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
                     "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}},
    "memory_stats": {
        "usage": 335872, "max_usage": 4083712, "limit": 25275990016,
        "stats": {"active_anon": 4096, "cache": 4096, "inactive_file": 0, "rss": 57344,
                  "total_inactive_file": 8192, "total_rss": 57344},
    },
}
# cgroup v2 (Docker's API documentation): no max_usage, and the page cache is `inactive_file`.
CGROUP_V2 = {
    "read": "2026-12-02T11:23:37.682743941Z",
    "cpu_stats": {"cpu_usage": {"total_usage": 1000, "usage_in_kernelmode": 0, "usage_in_usermode": 1000},
                  "system_cpu_usage": 5000, "online_cpus": 4},
    "memory_stats": {"usage": 10_000_000, "limit": 268435456,
                     "stats": {"anon": 6_000_000, "file": 4_000_000, "inactive_file": 3_000_000}},
}
# What Docker answers for a container that stopped meanwhile.
STOPPED = {"read": "0001-01-01T00:00:00Z", "preread": "0001-01-01T00:00:00Z", "cpu_stats": {"cpu_usage": {}},
           "precpu_stats": {"cpu_usage": {}}, "memory_stats": {}}


def test_a_cgroup_v1_sample_counts_memory_without_the_page_cache():
    sample = stats_sample(CGROUP_V1)
    assert sample == ContainerSample(cpu=CpuCounters(container=4682696552, system=2061160000000, cpus=2),
                                     memory_used=335872 - 8192, memory_limit=25275990016)


def test_a_cgroup_v2_sample_counts_memory_without_the_page_cache():
    sample = stats_sample(CGROUP_V2)
    assert sample is not None
    assert sample.memory_used == 7_000_000 and sample.memory_limit == 268435456
    assert sample.cpu == CpuCounters(container=1000, system=5000, cpus=4)


def test_cpus_come_from_the_per_cpu_list_where_online_cpus_is_missing():
    older = {**CGROUP_V1, "cpu_stats": {**CGROUP_V1["cpu_stats"], "online_cpus": 0}}  # type: ignore[dict-item]
    sample = stats_sample(older)
    assert sample is not None and sample.cpu.cpus == 2


def test_a_stopped_container_gives_no_sample():
    assert stats_sample(STOPPED) is None
    assert stats_sample({}) is None


def test_cpu_percent_is_the_containers_share_of_the_hosts_time_times_its_cpus():
    before = CpuCounters(container=1_000_000_000, system=100_000_000_000, cpus=2)
    after = CpuCounters(container=1_500_000_000, system=102_000_000_000, cpus=2)  # 2 s of 2 CPUs, 0.5 s busy
    assert cpu_percent(before, after) == pytest.approx(50.0)
    assert cpu_percent(after, after) is None  # the same moment tells nothing
    assert cpu_percent(after, before) is None  # counters that went back (a restart) neither


def test_services_sum_their_containers_and_limits_stop_at_the_hosts_memory():
    gib = 1 << 30

    def sample(busy: int, memory: int, limit: int) -> ContainerSample:
        return ContainerSample(CpuCounters(busy, 2_000_000_000, 2), memory, limit)

    start = CpuCounters(0, 0, 2)
    usages = service_usages([
        ("web", sample(500_000_000, 100, 16 * gib), start),  # half a CPU for 1 s; no limit: the host's 16 GiB
        ("web", sample(1_000_000_000, 200, 16 * gib), start),  # one CPU
        ("worker", sample(0, 50, gib), None),  # first seen: its CPU is not measured
        ("worker", sample(0, 60, gib), None),
    ], host_memory=16 * gib)
    assert usages == [
        ServiceUsage("web", containers=2, cpu_percent=pytest.approx(150.0), cpu_seconds=1.0, cpus=2,
                     memory_used=300, memory_limit=16 * gib),
        ServiceUsage("worker", containers=2, cpu_percent=None, cpu_seconds=0.0, cpus=2, memory_used=110,
                     memory_limit=2 * gib),
    ]


# -- with Docker -------------------------------------------------------------------------------

BUSYBOX = Path(shutil.which("busybox") or "/bin/busybox")


@pytest.fixture(scope="module")
def engine_and_image(tmp_path_factory: pytest.TempPathFactory):
    """An Engine of a fresh instance and a tiny image of its own (busybox, FROM scratch)."""
    require_docker()
    engine = Engine(f"t{uuid.uuid4().hex[:10]}")
    context = tmp_path_factory.mktemp("image")
    shutil.copy(BUSYBOX, context / "busybox")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\n")
    tag = f"{engine.instance}-usage:1"
    labels = [f"--label={k}={v}" for k, v in engine.labels(project="shop").items()]
    subprocess.run(["/usr/bin/docker", "build", "-q", "-t", tag, *labels, str(context)], check=True,
                   capture_output=True, env={"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin"}, timeout=120)
    try:
        yield engine, tag
    finally:
        engine.remove_instance()


def test_a_running_service_reports_its_cpu_and_memory(engine_and_image: tuple[Engine, str], tmp_path: Path):
    """Swarm services made as a deploy makes them (the project's labels): web with two replicas,
    one busy, and a worker scaled to 0; asked through the hooks, as the dashboard asks."""
    engine, image = engine_and_image
    network = engine.ensure_project_network("shop")
    for service, replicas, script in (("web", 2, "while :; do :; done"), ("worker", 0, "sleep 600")):
        engine.apply(ServiceSpec(
            name=engine.service_name("shop", service), image=image, networks=(Attachment(network),),
            labels=engine.labels(project="shop", service=service, deployment="1"), env={}, replicas=replicas,
            args=["/bin/busybox", "sh", "-c", script], limits=TaskLimits(memory="64M", memory_bytes=64 << 20),
        ))
    wait_for("both web tasks running", lambda: [u.containers for u in engine.project_usage("shop")] == [2],
             timeout=120, every=0.2)

    platform = api_platform(Settings(data_dir=tmp_path / "data", instance=engine.instance))
    platform.store.add_project("shop", created_by="alice")
    web, worker = operations.usage(platform, "shop")
    assert web.service == "web" and web.containers == 2
    assert web.memory_used > 0 and web.memory_limit == 2 * (64 << 20)
    assert web.cpu_percent is not None and web.cpu_percent > 0 and web.cpu_seconds > 0  # a busy loop
    assert worker == ServiceUsage("worker", containers=0, cpu_percent=None, cpu_seconds=0.0, cpus=0,
                                  memory_used=0, memory_limit=0)
    assert engine.project_usage("nothing-here") == []
    with pytest.raises(Refused):
        operations.usage(platform, "nothing-here")
