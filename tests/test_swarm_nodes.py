"""Swarm nodes read and changed as data (runtime/swarm_nodes.py), and the rules about them
(hooks/nodes.py): no Docker here. The JSON is what Docker 20.10 answered on the multi-node rig
(tests/multinode.py), cut to the fields that matter.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from hooks.errors import ErrorKind
from hooks.nodes import NodeError, check_labels, check_removable, find, join_command_for
from runtime.registry import RegistryAccess, self_signed_certificate
from runtime.swarm_nodes import (
    JoinTarget,
    SwarmNode,
    TaskPlacement,
    is_loopback,
    join_target,
    left_on,
    node_spec,
    relabelled,
    running_per_node,
    service_placements,
    short_of_replicas,
    swarm_nodes,
    task_placement,
)

MANAGER = {
    "ID": "t9m1", "Version": {"Index": 9},
    "Spec": {"Labels": {}, "Role": "manager", "Availability": "active"},
    "Description": {"Hostname": "mn1", "Engine": {"EngineVersion": "20.10.24+dfsg1"}},
    "Status": {"State": "ready", "Addr": "10.250.0.2"},
    "ManagerStatus": {"Leader": True, "Reachability": "reachable", "Addr": "10.250.0.2:2377"},
}
WORKER = {
    "ID": "xstb", "Version": {"Index": 16},
    "Spec": {"Labels": {"zone": "b"}, "Role": "worker", "Availability": "active"},
    "Description": {"Hostname": "mn2"},
    "Status": {"State": "ready", "Addr": "10.250.0.3"},
}


def task(service: str, node: str, desired: str = "running", state: str = "running") -> TaskPlacement:
    return TaskPlacement(service, node, desired, state)


def node(**changes: object) -> SwarmNode:
    fields: dict = {"id": "xstb", "name": "mn2", "address": "10.250.0.3", "role": "worker", "availability": "drain",
                    "state": "ready", "labels": {}, "manager": "", "leader": False, "tasks": 0, "here": False}
    fields.update(changes)
    return SwarmNode(**fields)


def test_nodes_are_read_with_their_role_state_labels_and_this_instances_running_tasks():
    tasks = [task("t-shop-web", "xstb"), task("t-shop-web", "t9m1"), task("t-caddy", "t9m1"),
             task("t-shop-web", "xstb", desired="shutdown", state="shutdown")]  # history does not count
    manager, worker = swarm_nodes([WORKER, MANAGER], tasks, here_id="t9m1")  # the daemon's node first
    assert manager == SwarmNode(id="t9m1", name="mn1", address="10.250.0.2", role="manager", availability="active",
                                state="ready", labels={}, manager="reachable", leader=True, tasks=2, here=True,
                                engine="20.10.24+dfsg1")
    assert (worker.name, worker.role, worker.state, worker.labels, worker.manager, worker.tasks, worker.here) == \
        ("mn2", "worker", "ready", {"zone": "b"}, "", 1, False)
    assert worker.as_json()["manager"] is None and manager.as_json()["manager"] == "reachable"


def test_a_managers_address_comes_from_its_manager_status_when_docker_left_it_unset():
    older = {**MANAGER, "Status": {"State": "ready", "Addr": "0.0.0.0"}}
    assert swarm_nodes([older], [], "t9m1")[0].address == "10.250.0.2"


def test_tasks_are_read_from_dockers_task_json():
    raw = {"ID": "k1", "ServiceID": "s1", "NodeID": "xstb", "DesiredState": "shutdown",
           "Status": {"State": "running"}}
    assert task_placement(raw) == TaskPlacement("s1", "xstb", "shutdown", "running")
    # Docker names a task's service by ID only (no ServiceName, checked on 20.10 and 28.2):
    # nodes:remove compares the tasks' services with the services' names, so the name is looked up.
    assert task_placement(raw, {"s1": "t-shop-web"}).service == "t-shop-web"
    assert task_placement({"Status": {}}) == TaskPlacement("", "", "", "")  # not placed yet
    assert running_per_node([task("a", "n1"), task("a", ""), task("b", "n1", state="starting")]) == {"n1": 1}


def test_the_join_address_is_the_managers_own_entry_in_the_swarm_not_what_it_advertises():
    swarm = {"NodeID": "t9m1", "NodeAddr": "10.250.0.2",
             "RemoteManagers": [{"NodeID": "other", "Addr": "10.250.0.9:2377"},
                                {"NodeID": "t9m1", "Addr": "10.250.0.2:4000"}]}
    assert join_target(swarm) == JoinTarget("10.250.0.2", 4000)
    # Measured: `swarm init --force-new-cluster --advertise-addr` changes NodeAddr but not the
    # address swarm gives joining nodes, which stays loopback.
    forced = {"NodeID": "se0w", "NodeAddr": "10.250.0.5", "RemoteManagers": [{"NodeID": "se0w", "Addr": "127.0.0.1:2377"}]}
    assert join_target(forced).is_loopback
    assert join_target({"NodeID": "x", "NodeAddr": "192.0.2.7"}) == JoinTarget("192.0.2.7", 2377)
    assert JoinTarget("fd00::2", 2377).address == "[fd00::2]:2377"
    assert join_target({"NodeID": "x", "RemoteManagers": [{"NodeID": "x", "Addr": "[fd00::2]:2377"}]}) == \
        JoinTarget("fd00::2", 2377)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_loopback_addresses(host: str):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["10.250.0.2", "192.0.2.7", "fd00::2", "manager.example.com", ""])
def test_addresses_other_machines_may_reach(host: str):
    assert not is_loopback(host)


EXTERNAL = RegistryAccess("registry.example.com:443", "ci", "secret")


def test_the_join_command_names_the_manager_and_the_token():
    made = join_command_for(JoinTarget("10.250.0.2", 2377), "SWMTKN-1-abc-def", EXTERNAL)
    assert made.command == "./setup.sh join 10.250.0.2:2377 SWMTKN-1-abc-def"  # a public certificate: no trust step
    assert (made.manager, made.token, made.registry, made.registry_ca) == \
        ("10.250.0.2:2377", "SWMTKN-1-abc-def", "registry.example.com:443", "")


def test_the_join_command_has_the_new_node_trust_the_daemons_own_registry():
    cert_pem, _ = self_signed_certificate("10.250.0.2")
    own = RegistryAccess("10.250.0.2:5000", "disco", "secret", ca_pem=cert_pem)
    made = join_command_for(JoinTarget("10.250.0.2", 2377), "SWMTKN-1-abc-def", own)
    words = made.command.split(" ")
    assert words[:4] == ["./setup.sh", "join", "10.250.0.2:2377", "SWMTKN-1-abc-def"]
    assert words[4:6] == ["--registry", "10.250.0.2:5000"] and words[6] == made.registry_ca
    body = "".join(line for line in cert_pem.splitlines() if not line.startswith("-----"))
    assert made.registry_ca == body  # what setup.sh wraps in BEGIN/END lines again
    assert "secret" not in made.command


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", ""])
def test_no_join_command_for_a_manager_on_loopback_and_the_refusal_says_how_to_fix_it(host: str):
    with pytest.raises(NodeError) as refused:
        join_command_for(JoinTarget(host, 2377), "SWMTKN-1-abc-def", EXTERNAL)
    message = str(refused.value)
    assert refused.value.kind == ErrorKind.CONFLICT
    assert "other machines cannot reach" in message and "docker swarm init --advertise-addr ADDRESS" in message
    assert "SWMTKN" not in message


def test_a_node_update_sends_back_its_whole_spec_with_the_change():
    current = {"Labels": {"zone": "b"}, "Role": "worker", "Availability": "active", "Name": "n"}
    assert node_spec(current, availability="drain") == {**current, "Availability": "drain"}
    assert node_spec(current, labels={"a": "1"}) == {**current, "Labels": {"a": "1"}}
    assert current["Availability"] == "active"  # not changed in place
    assert relabelled({"zone": "b", "ssd": "yes"}, {"zone": "c", "gpu": "1"}, ["ssd"]) == {"zone": "c", "gpu": "1"}
    assert relabelled({"zone": "b"}, {"zone": "c"}, ["zone"]) == {"zone": "c"}


def test_what_is_left_on_a_drained_node_that_answers_is_what_it_has_not_stopped():
    tasks = [task("web", "xstb", desired="shutdown", state="running"),  # being stopped
             task("web", "xstb", desired="shutdown", state="shutdown"),
             task("web", "t9m1"), task("worker", "xstb", desired="running", state="pending")]
    assert left_on(node(), tasks) == [tasks[0], tasks[3]]


def test_on_a_node_that_is_down_only_what_swarm_still_wants_there_counts():
    # Its tasks keep the last state it sent ("running") forever: they cannot hold up a removal.
    tasks = [task("web", "xstb", desired="shutdown", state="running"), task("db", "xstb", desired="running")]
    assert left_on(node(state="down"), tasks) == [tasks[1]]


def test_services_are_short_until_their_tasks_run_on_other_nodes():
    tasks = [task("web", "t9m1"), task("web", "xstb"), task("web", "t9m1", state="starting"), task("db", "t9m1")]
    assert short_of_replicas({"web": 2, "db": 1}, tasks, away_from="xstb") == {"web": 1}
    assert short_of_replicas({"web": 2}, [*tasks, task("web", "n3")], away_from="xstb") == {}


def test_nodes_are_found_by_id_or_by_a_hostname_only_one_has():
    nodes = [node(id="a1", name="mn1"), node(id="b2", name="twin"), node(id="c3", name="twin")]
    assert find(nodes, "mn1").id == "a1" and find(nodes, "c3").id == "c3"
    with pytest.raises(NodeError, match="2 nodes are named 'twin': give one's ID") as ambiguous:
        find(nodes, "twin")
    assert "b2" in str(ambiguous.value) and ambiguous.value.kind == ErrorKind.CONFLICT
    with pytest.raises(NodeError, match="no node named 'nope'") as missing:
        find(nodes, "nope")
    assert missing.value.kind == ErrorKind.NOT_FOUND


def test_neither_the_daemons_node_nor_another_manager_is_removed():
    check_removable(node())  # a worker may go
    with pytest.raises(NodeError, match="the node this server runs on"):
        check_removable(node(role="manager", here=True))
    with pytest.raises(NodeError, match="demote it first"):
        check_removable(node(role="manager"))


def test_a_node_holding_a_volumes_data_is_only_removed_when_forced():
    holding = node(labels={"disco.volume.disco-x-shop-data": "true", "zone": "b"})
    with pytest.raises(NodeError, match="holds the data of volume\\(s\\) disco-x-shop-data.*add --force") as refused:
        check_removable(holding)
    assert refused.value.kind == ErrorKind.CONFLICT
    check_removable(holding, force=True)


def test_label_keys_and_values_a_placement_constraint_can_name():
    check_labels({"zone": "eu-west-1a", "disk.type": "ssd", "rack": ""}, ["old_key"])
    for wrong in ({"": "x"}, {"-x": "1"}, {"a b": "1"}, {"k": "two words"}, {"k": "a==b"}, {"k" * 101: "1"}):
        with pytest.raises(NodeError):
            check_labels(wrong, [])
    with pytest.raises(NodeError, match="Disco's own"):
        check_labels({}, ["disco.volume"])


def service(name: str, app_service: str, constraints: list[str]) -> dict:
    return {"ID": name, "Spec": {"Name": name, "Labels": {"disco.service": app_service},
                                 "TaskTemplate": {"Placement": {"Constraints": constraints}}}}


def test_a_projects_services_say_where_they_run_and_which_wait_for_their_volumes_node():
    holder = node(id="t9m1", name="mn1", role="manager", availability="active", here=True,
                  labels={"disco.volume.t-shop-data": "true"})
    worker = node(availability="active")
    web = service("t-shop-web", "web", [])
    db = service("t-shop-db", "db", ["node.labels.disco.volume.t-shop-data==true"])
    tasks = [task("t-shop-web", "t9m1"), task("t-shop-web", "xstb"), task("t-shop-web", "xstb", state="starting"),
             task("t-shop-db", "t9m1"), task("t-shop-db", "xstb", desired="shutdown", state="running")]
    placements = service_placements([web, db], tasks, [holder, worker])
    assert [p.as_json() for p in placements] == [
        {"service": "db", "running": {"mn1": 1}, "kept_to": ["mn1"], "waiting": None},
        {"service": "web", "running": {"mn1": 1, "mn2": 1}, "kept_to": [], "waiting": None},
    ]
    down = service_placements([db], [], [replace(holder, state="down"), worker])[0]
    assert down.waiting == "mn1, which holds its volume data, is down" and down.kept_to == ["mn1"]
    drained = service_placements([db], [], [replace(holder, availability="drain"), worker])[0]
    assert drained.waiting == "mn1, which holds its volume data, is drained"
    gone = service_placements([db], [], [worker])[0]
    assert gone.waiting == "no node holds its volumes' data any more"
