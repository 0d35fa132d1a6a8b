"""What Disco asks Docker for, read as data (runtime/docker_specs.py): no Docker needed.

Each assertion guards a choice that zero downtime, health checks or routing depend on.
"""

from __future__ import annotations

import http.server
import itertools
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from runtime.appconfig import Limits, PublishedPort
from runtime.docker_engine import _failure_reason, old_task_addresses, port_hint
from runtime.settings import Settings
from runtime.docker_specs import (
    DOCKER_CLI,
    Attachment,
    PROBE_BINARY,
    PROBE_PATH,
    SECOND,
    ServiceSpec,
    TaskLimits,
    build_command,
    health_command,
    instance_labels,
    on_node,
    oneoff_container,
    proxy_service,
    swarm_service,
    service_networks,
    task_limits,
)

LABELS = {"disco.instance": "t", "disco.project": "shop", "disco.service": "web", "disco.deployment": "7"}
WEB_NETWORKS = (Attachment("t-shop-net", ("web",)), Attachment("t-net"))


def web(**changes: object) -> ServiceSpec:
    fields: dict = {"name": "t-shop-web", "image": "t-shop:7", "networks": WEB_NETWORKS, "labels": LABELS,
                    "env": {"PORT": "8000", "A": "1"}, "replicas": 2, "port": 8000, "health_path": "/healthz",
                    "health_timeout": 30, "mounts": [("t-shop-data", "/data")]}
    fields.update(changes)
    return ServiceSpec(**fields)  # type: ignore[arg-type]


def mounts_of(kwargs: dict) -> list[dict]:
    return kwargs["task_template"]["ContainerSpec"]["Mounts"]


def test_updates_start_the_new_task_first_and_roll_back_on_failure():
    kwargs = swarm_service(web())
    update = kwargs["update_config"]
    assert update["Order"] == "start-first"  # old tasks keep serving until the new one is healthy
    assert update["FailureAction"] == "rollback"  # docker-py's default is "continue"
    assert update["Parallelism"] == 1 and update["MaxFailureRatio"] == 0
    assert kwargs["rollback_config"]["Order"] == "start-first"
    assert kwargs["rollback_config"]["FailureAction"] == "pause"  # a failed rollback must not loop


def test_services_are_reached_by_dns_round_robin_not_a_vip():
    assert swarm_service(web())["endpoint_spec"]["Mode"] == "dnsrr"  # VIPs need IPVS


def test_replicas_network_labels_env_and_args_reach_the_spec():
    kwargs = swarm_service(web(args=["python", "-m", "app"]))
    assert kwargs["mode"] == {"replicated": {"Replicas": 2}}
    assert kwargs["labels"] == LABELS
    template = kwargs["task_template"]
    assert template["Networks"] == [{"Target": "t-shop-net", "Aliases": ["web"]}, {"Target": "t-net"}]
    assert template["RestartPolicy"]["Condition"] == "on-failure"
    container = template["ContainerSpec"]
    assert container["Image"] == "t-shop:7"
    assert container["Labels"] == LABELS  # tasks are matched to their deployment by this label
    assert container["Env"] == ["PORT=8000", "A=1"]
    assert container["Args"] == ["python", "-m", "app"]
    assert container["Init"] is True  # apps that ignore SIGTERM still stop


def test_a_service_with_a_port_is_health_checked_by_the_read_only_probe():
    kwargs = swarm_service(web())
    probe = [m for m in mounts_of(kwargs) if m["Target"] == PROBE_PATH]
    assert probe == [{"Target": PROBE_PATH, "Source": PROBE_BINARY, "Type": "bind", "ReadOnly": True}]
    check = kwargs["task_template"]["ContainerSpec"]["Healthcheck"]
    assert check["Test"] == health_command(8000, "/healthz")
    assert check["StartPeriod"] == 30 * SECOND  # health_timeout: failures before it do not count
    assert check["Interval"] == 1 * SECOND and check["Retries"] == 3
    assert kwargs["update_config"]["Monitor"] == 1 * SECOND


def test_the_servers_health_interval_spaces_the_checks_and_moves_swarms_deadline():
    slow = swarm_service(web(health_interval=10))["task_template"]["ContainerSpec"]["Healthcheck"]
    assert slow["Interval"] == 10 * SECOND and slow["StartPeriod"] == 30 * SECOND and slow["Retries"] == 3
    # Swarm fails a never-healthy task after the start period and 3 failed checks: the deploy's
    # backstop must not give up before swarm does, or its reason would be a timeout, not the check's.
    assert web(health_interval=10).swarm_gives_up_after == 30 + 3 * 10
    assert web().swarm_gives_up_after == 30 + 3
    # The deploy's output says how often it is checked; a worker without a check has no cadence.
    assert web(health_interval=10).cadence == ", every 10 s"
    assert web(port=None, health_path=None).cadence == ""
    assert web(port=None, health_path=None, health_command=["true"]).cadence == ", every 1 s"


def test_a_worker_without_a_port_has_no_health_check_and_no_probe():
    kwargs = swarm_service(web(port=None, health_path=None))
    assert "Healthcheck" not in kwargs["task_template"]["ContainerSpec"]
    assert all(m["Target"] != PROBE_PATH for m in mounts_of(kwargs))
    assert kwargs["update_config"]["Monitor"] == 5 * SECOND  # watched longer for an early crash


def test_named_volumes_are_mounted_where_disco_toml_says():
    volumes = [m for m in mounts_of(swarm_service(web())) if m["Type"] == "volume"]
    assert volumes == [{"Target": "/data", "Source": "t-shop-data", "Type": "volume", "ReadOnly": False}]


def test_tcp_health_check_connects_to_the_tasks_overlay_address():
    test = health_command(8000, None)
    assert test[:4] == ["CMD", PROBE_PATH, "sh", "-c"]  # exec form: no shell needed in the image
    script = test[4]
    assert "hostname -i" in script and "127.0.0.1" not in script  # catches apps bound to localhost
    assert re.search(r'nc "\$H" 8000', script)


def probe_answer(status_line: str, tmp_path: Path) -> int:
    """Run the HTTP check's script with a fake busybox whose nc answers `status_line`."""
    fake = tmp_path / "busybox"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  hostname) echo 10.0.0.5 ;;\n"
        "  timeout) shift 2; exec \"$@\" ;;\n"
        f"  nc) cat >/dev/null; printf '{status_line}\\r\\nServer: x\\r\\n\\r\\n' ;;\n"
        '  *) cmd="$1"; shift; exec "$cmd" "$@" ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    script = health_command(8000, "/healthz")[4].replace(PROBE_PATH, str(fake))
    return subprocess.run(["sh", "-c", script], capture_output=True, timeout=10, check=False).returncode


@pytest.mark.parametrize("status, healthy", [
    ("HTTP/1.1 200 OK", True), ("HTTP/1.0 204 No Content", True), ("HTTP/1.1 302 Found", True),
    ("HTTP/1.1 404 Not Found", False), ("HTTP/1.1 500 Internal Server Error", False), ("garbage", False),
])
def test_http_health_check_passes_on_2xx_and_3xx_only(status: str, healthy: bool, tmp_path: Path):
    assert (probe_answer(status, tmp_path) == 0) is healthy


def test_a_service_pinned_to_a_node_carries_its_constraint_and_an_unpinned_one_none():
    assert on_node("n1") == ("node.id==n1",) and on_node("") == ()
    pinned = swarm_service(web(constraints=on_node("n1")))["task_template"]
    assert pinned["Placement"] == {"Constraints": ["node.id==n1"]}
    assert "Placement" not in swarm_service(web())["task_template"]  # swarm may place it anywhere


def test_http_health_check_asks_for_the_configured_path():
    script = health_command(8000, "/ready?x=1")[4]
    assert "GET /ready?x=1 HTTP/1.0" in script and "GET /ready?x=1 on port 8000" in script


def test_proxy_publishes_host_mode_ports_and_updates_stop_first():
    kwargs = proxy_service("t", "t-net", "caddy:2", Path("/srv/run"), 8080, 8443, ["caddy", "run"], "n1")
    assert kwargs["endpoint_spec"]["Ports"] == [
        {"Protocol": "tcp", "PublishedPort": 8080, "TargetPort": 80, "PublishMode": "host"},
        {"Protocol": "tcp", "PublishedPort": 8443, "TargetPort": 443, "PublishMode": "host"},
    ]  # no routing mesh without IPVS
    assert kwargs["update_config"]["Order"] == "stop-first"  # two tasks cannot share a host port
    assert kwargs["mode"] == {"replicated": {"Replicas": 1}}
    container = kwargs["task_template"]["ContainerSpec"]
    assert container["Args"] == ["caddy", "run"]
    assert {m["Target"]: (m["Source"], m["Type"]) for m in container["Mounts"]} == {
        "/run/disco": ("/srv/run", "bind"),  # the admin socket and caddy.json
        "/data": ("t-caddy-data", "volume"),  # certificates survive a restart
        "/config": ("t-caddy-config", "volume"),
    }
    assert kwargs["task_template"]["Networks"] == [{"Target": "t-net"}]
    assert kwargs["task_template"]["RestartPolicy"]["Condition"] == "any"
    # On the daemon's node: its run dir is there, and the host ports its domains point at.
    assert kwargs["task_template"]["Placement"] == {"Constraints": ["node.id==n1"]}


def test_the_proxy_fingerprint_changes_only_with_its_settings():
    def fingerprint(**changes: object) -> str:
        args: dict = {"instance": "t", "network": "t-net", "image": "caddy:2", "run_dir": Path("/r"),
                      "http_port": 80, "https_port": 443, "command": ["caddy", "run"], "node_id": "n1"}
        args.update(changes)
        labels = proxy_service(**args)["labels"]
        assert labels["disco.instance"] == "t" and labels["disco.role"] == "proxy"
        return labels["disco.spec"]

    assert fingerprint() == fingerprint()  # a daemon restart does not restart Caddy
    assert len({fingerprint(), fingerprint(image="caddy:3"), fingerprint(http_port=8080),
                fingerprint(command=["caddy", "run", "--resume"]), fingerprint(run_dir=Path("/x"))}) == 5
    # Its node is compared apart: a new placement alone does not restart a Caddy that meets it.
    assert fingerprint(node_id="n2") == fingerprint()


def test_build_command_line_carries_tag_dockerfile_labels_and_args():
    argv = build_command(Path("/tmp/tree/site"), Path("/tmp/tree/build/Dockerfile"), "t-shop:7",
                         {"APP_ENV": "prod", "X": "a b"}, {"disco.project": "shop", "disco.deployment": "7"})
    assert argv[:3] == [DOCKER_CLI, "build", "--progress=plain"]  # plain: lines stream as they come
    assert argv[argv.index("-t") + 1] == "t-shop:7"
    assert argv[argv.index("-f") + 1] == "/tmp/tree/build/Dockerfile"
    pairs = list(itertools.pairwise(argv))
    assert ("--build-arg", "APP_ENV=prod") in pairs and ("--build-arg", "X=a b") in pairs  # one argv item each
    assert ("--label", "disco.project=shop") in pairs and ("--label", "disco.deployment=7") in pairs
    assert argv[-1] == "/tmp/tree/site"  # the context comes last


def test_instance_labels_prefix_every_extra_key():
    assert instance_labels("t", project="shop", role="run") == {
        "disco.instance": "t", "disco.project": "shop", "disco.role": "run"}


def test_limits_reach_the_task_and_one_off_containers():
    limits = TaskLimits(memory="256M", memory_bytes=256 << 20, cpus=0.5, pids=100)
    resources = swarm_service(web(limits=limits))["task_template"]["Resources"]
    assert resources == {"Limits": {"MemoryBytes": 256 << 20, "NanoCPUs": 500_000_000, "Pids": 100}}
    # No swap beyond the limit: memswap equal to memory.
    assert limits.as_container_options() == {"mem_limit": 256 << 20, "memswap_limit": 256 << 20,
                                             "nano_cpus": 500_000_000, "pids_limit": 100}
    assert "Resources" not in swarm_service(web())["task_template"]


def test_missing_limits_come_from_the_servers_defaults(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, default_memory="512M", default_cpus="", default_pids=300)
    assert task_limits(Limits(), settings) == TaskLimits("512M", 512 << 20, None, 300)
    assert task_limits(Limits(memory="1G", cpus=2, pids=50), settings) == TaskLimits("1G", 1 << 30, 2, 50)
    assert task_limits(Limits(), Settings(data_dir=tmp_path, default_cpus="1.5")).cpus == 1.5


def run_probe(port: int, path: str | None) -> subprocess.CompletedProcess:
    """The health check's script run here with the host's static busybox, as a task runs it."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    script = health_command(port, path)[4].replace(PROBE_PATH, busybox)
    return subprocess.run([busybox, "sh", "-c", script], capture_output=True, text=True, timeout=20, check=False)


@pytest.fixture
def http_404():
    """A server on all addresses that answers every request 404."""
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_a_failed_check_says_what_it_checked_what_it_got_and_what_listens(http_404: int):
    port = http_404
    got = run_probe(port, "/healthz")
    assert got.returncode == 1
    checked, _, listening = got.stdout.strip().partition("; listening: ")
    assert checked == f"GET /healthz on port {port} got HTTP/1.0 404 Not Found"
    assert f"0.0.0.0:{port}" in listening.split()
    closed = free_tcp_port()
    assert run_probe(closed, None).stdout.startswith(f"TCP connect to port {closed} failed; listening: ")
    assert run_probe(closed, "/").stdout.startswith(f"GET / on port {closed} got no answer; listening: ")
    assert run_probe(port, None).returncode == 0 and run_probe(port, None).stdout == ""
    hostile = '/a"$(echo pwned)`id`\'$HOME'
    assert run_probe(closed, hostile).stdout.startswith(f"GET {hostile} on port {closed} got no answer")


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("listening, hint", [
    (["0.0.0.0:8080"], "the app listens on 8080, not 8000: set [services.web] port = 8080 in disco.toml "
                       "(or make it listen on $PORT)"),
    ([":::8080", "127.0.0.11:40441"], "the app listens on 8080, not 8000"),  # Docker's DNS is not the app
    (["0.0.0.0:8080", "0.0.0.0:9090"], "the app listens on 8080, 9090, not 8000: set [services.web] port"),
    (["127.0.0.1:8000"], "the app listens on 127.0.0.1:8000 only, which the proxy cannot reach: "
                         "make it listen on 0.0.0.0:8000"),
    ([], "nothing listens on a TCP port in the container (the health check knocks on 8000)"),
    (["127.0.0.11:40441"], "nothing listens on a TCP port"),
    (["0.0.0.0:8000"], None),  # it listens where it should: the answer was wrong, not the port
    ([":::8000"], None),
    (["10.0.1.5:8000"], None),
    (["127.0.0.1:8080"], "the app listens on 127.0.0.1:8080 only, which the proxy cannot reach: "
                         "make it listen on 0.0.0.0:$PORT"),
    (["0.0.0.0:8080", "127.0.0.1:5432"], "the app listens on 8080, not 8000: set [services.web] port = 8080"),
])
def test_port_hints_name_the_fix(listening: list[str], hint: str | None):
    found = port_hint("web", 8000, listening)
    assert (found is None) if hint is None else (found is not None and found.startswith(hint))


def test_one_off_containers_run_on_the_project_network_with_volumes_limits_and_an_init():
    limits = TaskLimits(memory="256M", memory_bytes=256 << 20, pids=64)
    options = oneoff_container("t-shop:3-abc", ["/bin/sh", "-c", "./migrate"], {"A": "1"},
                               {"disco.role": "release"}, ["t-shop-net", "t-net"], [("t-shop-data", "/data")], limits)
    assert options["image"] == "t-shop:3-abc" and options["command"] == ["/bin/sh", "-c", "./migrate"]
    # Created on the project's network; the engine connects the instance's before it starts.
    assert options["network"] == "t-shop-net" and "detach" not in options and options["init"] is True
    assert options["environment"] == {"A": "1"} and options["labels"] == {"disco.role": "release"}
    assert [(m["Source"], m["Target"], m["Type"]) for m in options["mounts"]] == [("t-shop-data", "/data", "volume")]
    assert options["mem_limit"] == 256 << 20 and options["pids_limit"] == 64 and not options["tty"]


# -- networks: what each kind of service shares with whom (issue 12) ----------------------------


def networks_of(service: str, routed: bool = False, internal_name: str | None = None) -> list[dict]:
    spec = web(networks=service_networks("t-net", "t-shop-net", service, routed, internal_name))
    return swarm_service(spec)["task_template"]["Networks"]


def test_a_private_service_is_only_on_its_project_network_by_its_short_name():
    # Not on the instance network: no other project's container (nor the proxy) shares a network with it.
    assert networks_of("worker") == [{"Target": "t-shop-net", "Aliases": ["worker"]}]


def test_the_routed_web_service_is_also_on_the_instance_network_under_its_swarm_name_only():
    # The proxy reaches it by its swarm service name; it gets no <project>-<service> alias there.
    assert networks_of("web", routed=True) == [{"Target": "t-shop-net", "Aliases": ["web"]}, {"Target": "t-net"}]


def test_an_internal_service_answers_to_its_stable_name_on_the_instance_network():
    assert networks_of("db", internal_name="shop-db") == [
        {"Target": "t-shop-net", "Aliases": ["db"]}, {"Target": "t-net", "Aliases": ["shop-db"]}]
    assert networks_of("web", routed=True, internal_name="shop-web") == [
        {"Target": "t-shop-net", "Aliases": ["web"]}, {"Target": "t-net", "Aliases": ["shop-web"]}]


def test_project_networks_and_internal_names_cannot_collide():
    from runtime.docker_engine import Engine
    engine = Engine("t")  # names only: it never connects
    assert engine.project_network_name("shop") == "t-shop-net" != engine.network_name
    assert engine.internal_name("shop", "db") == "shop-db"
    # Project a's service b-c and project a-b's service c: two names, as runtime/names.py joins them.
    assert engine.internal_name("a", "b-c") != engine.internal_name("a-b", "c")
    assert engine.project_network_name("a-b") != engine.project_network_name("a")
    assert len(engine.internal_name("p" * 40, "s" * 40)) <= 63  # a DNS label


# -- health commands and host-published ports (issue 12) ---------------------------------------


def test_a_health_command_runs_in_the_task_in_exec_form_without_the_probe():
    kwargs = swarm_service(web(health_path=None, health_command=["pg_isready", "-U", "app"]))
    check = kwargs["task_template"]["ContainerSpec"]["Healthcheck"]
    assert check["Test"] == ["CMD", "pg_isready", "-U", "app"]  # no shell: the image may have none
    # The same clock as the probe's: health_timeout is the start period, then 3 failures in a row.
    assert check["StartPeriod"] == 30 * SECOND and check["Interval"] == 1 * SECOND and check["Retries"] == 3
    assert all(m["Target"] != PROBE_PATH for m in mounts_of(kwargs))  # the app's command, not the probe
    assert kwargs["update_config"]["Monitor"] == 1 * SECOND


def test_a_worker_with_a_health_command_is_checked_by_it():
    kwargs = swarm_service(web(port=None, health_path=None, health_command=["/app/ready"]))
    assert kwargs["task_template"]["ContainerSpec"]["Healthcheck"]["Test"] == ["CMD", "/app/ready"]
    assert kwargs["update_config"]["Monitor"] == 1 * SECOND


def test_published_ports_are_host_mode_and_the_service_updates_and_rolls_back_stop_first():
    spec = web(publish=(PublishedPort(5432, 5432), PublishedPort(6000, 53, "udp")))
    assert spec.stops_first and not web().stops_first
    kwargs = swarm_service(spec)
    assert kwargs["endpoint_spec"] == {"Mode": "dnsrr", "Ports": [
        {"Protocol": "tcp", "PublishedPort": 5432, "TargetPort": 5432, "PublishMode": "host"},
        {"Protocol": "udp", "PublishedPort": 6000, "TargetPort": 53, "PublishMode": "host"},
    ]}  # dnsrr still: the ingress mesh and VIPs need IPVS
    # Two tasks cannot bind one host port: the old one stops first, both ways.
    assert kwargs["update_config"]["Order"] == "stop-first"
    assert kwargs["rollback_config"]["Order"] == "stop-first"
    assert kwargs["update_config"]["FailureAction"] == "rollback"


def test_a_service_without_published_ports_publishes_none():
    assert "Ports" not in swarm_service(web())["endpoint_spec"]


def test_a_failed_health_command_is_named_with_its_exit_code_and_last_output():
    spec = web(health_path=None, health_command=["pg_isready", "-h", "127.0.0.1"])
    unhealthy = {"Health": {"Status": "unhealthy", "Log": [
        {"ExitCode": 2, "Output": "starting\n"}, {"ExitCode": 1, "Output": "127.0.0.1:5432 - no response\n"}]}}
    assert _failure_reason(spec, {"State": "failed"}, {"ExitCode": 137}, unhealthy) == (
        "health command `pg_isready -h 127.0.0.1` of t-shop-web exited 1: 127.0.0.1:5432 - no response (for 30 s)")
    # -1: Docker could not run it (not in the image) or it outlived the check's timeout.
    missing = {"Health": {"Status": "starting", "Log": [{"ExitCode": -1, "Output": "exec: \"pg_isready\": "
                                                                                   "executable file not found"}]}}
    assert _failure_reason(spec, {"State": "running"}, {}, missing) == (
        "health command `pg_isready -h 127.0.0.1` of t-shop-web failed: exec: \"pg_isready\": executable file "
        "not found (for 30 s)")


def test_a_task_never_placed_says_why():
    pending = {"State": "pending", "Err": "no suitable node (host-mode port already in use on 1 node)"}
    assert _failure_reason(web(), pending, {}, {}) == (
        "t-shop-web could not start: no suitable node (host-mode port already in use on 1 node)")


def swarm_task(deployment: str, state: str, addresses: dict[str, str]) -> dict:
    """A task as swarm lists it: its labels, its state and its address on each network."""
    return {"Spec": {"ContainerSpec": {"Labels": {"disco.deployment": deployment}}}, "Status": {"State": state},
            "NetworksAttachments": [{"Network": {"Spec": {"Name": network}}, "Addresses": [address]}
                                    for network, address in addresses.items()]}


def test_the_old_tasks_addresses_are_those_on_the_proxys_network_of_other_deployments_still_running():
    tasks = [
        swarm_task("2", "running", {"t-net": "10.0.1.9/24", "t-shop-net": "10.0.5.9/24"}),  # the new one
        swarm_task("1", "running", {"t-net": "10.0.1.4/24", "t-shop-net": "10.0.5.4/24"}),  # old, desired shutdown
        swarm_task("1", "shutdown", {"t-net": "10.0.1.3/24"}),  # long gone: its address may be anyone's now
        swarm_task("1", "running", {"t-shop-net": "10.0.5.7/24"}),  # only on the project's network
    ]
    assert old_task_addresses(tasks, "2", "t-net") == {"10.0.1.4"}
    # An address swarm gave again to a task of this deployment is not an old one.
    tasks.append(swarm_task("2", "starting", {"t-net": "10.0.1.4/24"}))
    assert old_task_addresses(tasks, "2", "t-net") == set()
    # A task not attached yet lists no networks.
    assert old_task_addresses([{**swarm_task("1", "running", {}), "NetworksAttachments": None}], "2", "t-net") == set()

