"""The swarm's nodes: listing them, the command that joins a new machine, their labels, and
removing one without dropping what runs there. Every change is audited; `actor` names who asked.

A second node only joins once a registry can carry images to it (hooks/registry.py): the join
command makes the daemon's own registry the first time, unless an external one was set.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hooks import registry
from hooks.errors import ErrorKind, Refused
from hooks.platform import Platform
from runtime.registry import RegistryAccess
from runtime.swarm_nodes import JoinTarget, SwarmNode, TaskPlacement, left_on, short_of_replicas

# Keys and values a placement constraint (`node.labels.KEY==VALUE`) can name without quoting.
LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
LABEL_VALUE = re.compile(r"[A-Za-z0-9._:/@+-]{0,200}")
RESERVED_LABELS = "disco."  # set by Disco itself (where a volume lives, runtime/docker_specs.volume_label)
VOLUME_LABELS = "disco.volume."
REMOVE_TIMEOUT = 180.0  # seconds a removal waits for the node's tasks to run elsewhere
REMOVE_POLL = 0.5
Progress = Callable[[str], None]


class NodeError(Refused):
    """A node request refused; the message is for the person who asked."""


@dataclass(frozen=True)
class JoinCommand:
    command: str  # to run on the new machine, in a copy of this repository
    manager: str  # ADDRESS:PORT it joins
    token: str = field(repr=False)  # the swarm's worker join token (a secret: whoever has it can join a machine)
    registry: str  # HOST:PORT the new node pulls images from
    registry_ca: str  # base64 of the DER certificate the new node trusts it with ("": publicly trusted)


@dataclass(frozen=True)
class Removed:
    node: SwarmNode  # as it was just before it was removed
    was_up: bool  # it still answered: its engine keeps asking to rejoin until it leaves


def check_reachable(target: JoinTarget) -> None:
    """The rule: a machine can only join a manager it can reach, so never one on loopback."""
    if not target.host or target.is_loopback:
        raise NodeError(
            f"this swarm's manager is at {target.address or 'no address'}, which other machines cannot reach: it "
            "was initialised for one server (setup.sh runs `docker swarm init --advertise-addr 127.0.0.1`). Make it "
            "again on an address the new machine reaches: `docker swarm leave --force && docker swarm init "
            "--advertise-addr ADDRESS` on this server, then restart `disco serve` (it makes its proxy again) and "
            "deploy each project again (`disco deploy -p NAME`): volumes and images stay, swarm services do not",
            ErrorKind.CONFLICT)


def join_command_for(target: JoinTarget, token: str, access: RegistryAccess) -> JoinCommand:
    """`setup.sh join`, which also has the new node trust the registry's certificate."""
    check_reachable(target)
    words = ["./setup.sh", "join", target.address, token]
    if access.ca_pem:
        words += ["--registry", access.address, access.ca_base64]
    return JoinCommand(command=shlex.join(words), manager=target.address, token=token, registry=access.address,
                       registry_ca=access.ca_base64)


def join_command(platform: Platform, actor: str) -> JoinCommand:
    """The command that joins a new machine as a worker; audited, as it hands out the token.
    The registry the new node will pull from must answer first (made now if it is the daemon's
    own and there is none yet): a node without one could run none of the apps."""
    target = platform.engine.join_target()
    check_reachable(target)
    try:
        access = registry.ensure(platform.settings, platform.store, platform.engine, target.host)
    except registry.RegistryProblem as err:
        raise NodeError(f"a second node cannot be added until a registry carries the images to it: {err}",
                        ErrorKind.CONFLICT) from None
    made = join_command_for(target, platform.engine.worker_join_token(), access)
    platform.store.audit(actor, "nodes:join-command", made.manager)
    return made


def listing(platform: Platform) -> list[SwarmNode]:
    return platform.engine.nodes()


def find(nodes: list[SwarmNode], name: str) -> SwarmNode:
    """The node with that ID or hostname; hostnames need not be unique in a swarm, so an
    ambiguous one is refused, listing the IDs to pick from."""
    by_id = [node for node in nodes if node.id == name]
    if by_id:
        return by_id[0]
    named = [node for node in nodes if node.name == name]
    if not named:
        raise NodeError(f"no node named {name[:100]!r} (disco nodes lists them)", ErrorKind.NOT_FOUND)
    if len(named) > 1:
        raise NodeError(f"{len(named)} nodes are named {name!r}: give one's ID ({', '.join(n.id for n in named)})",
                        ErrorKind.CONFLICT)
    return named[0]


def check_labels(set_labels: dict[str, str], remove: list[str]) -> None:
    for key in [*set_labels, *remove]:
        if not LABEL_KEY.fullmatch(key):
            raise NodeError(f"invalid label key {key[:100]!r}: 1 to 100 characters of letters, digits, '.', '_' "
                            "and '-', starting with a letter or digit")
        if key.startswith(RESERVED_LABELS):
            raise NodeError(f"label {key!r}: labels starting with {RESERVED_LABELS!r} are Disco's own")
    for key, value in set_labels.items():
        if not LABEL_VALUE.fullmatch(value):
            raise NodeError(f"invalid value for label {key!r}: up to 200 characters of letters, digits and "
                            "'._:/@+-' (no spaces)")


def label(platform: Platform, actor: str, name: str, set_labels: dict[str, str], remove: list[str]) -> SwarmNode:
    check_labels(set_labels, remove)
    node = find(listing(platform), name)
    labels = platform.engine.relabel_node(node.id, set_labels, remove)
    changes = [f"{k}={v}" for k, v in sorted(set_labels.items())] + [f"{k}-" for k in sorted(remove)]
    platform.store.audit(actor, "nodes:label", node.name, " ".join(changes))
    return replace(node, labels=labels)


def check_removable(node: SwarmNode, force: bool = False) -> None:
    """The rule: the daemon's own node and any other manager stay (a manager leaves the Raft
    quorum by being demoted first, which is a decision about the quorum, not a removal); a node
    holding a volume's data stays unless forced (the services pinned to it would have none)."""
    if node.here:
        raise NodeError(f"{node.name} is the node this server runs on (its manager): it cannot be removed",
                        ErrorKind.CONFLICT)
    if node.role == "manager":
        raise NodeError(f"{node.name} is a manager: demote it first (`docker node demote {node.id}` on a "
                        "manager), then remove it", ErrorKind.CONFLICT)
    volumes = sorted(key.removeprefix(VOLUME_LABELS) for key in node.labels if key.startswith(VOLUME_LABELS))
    if volumes and not force:
        raise NodeError(f"{node.name} holds the data of volume(s) {', '.join(volumes)}, and the services using them "
                        "run there only: add --force to remove it anyway (their data stays on that machine)",
                        ErrorKind.CONFLICT)


def removable(platform: Platform, name: str, force: bool = False) -> SwarmNode:
    """The node to remove, refused before anything changes if it may not be."""
    node = find(listing(platform), name)
    check_removable(node, force)
    return node


def remove(platform: Platform, actor: str, node: SwarmNode, force: bool, on_progress: Progress,
           stop: Callable[[], bool] = lambda: False, timeout: float = REMOVE_TIMEOUT) -> Removed:
    """Drain the node, wait until no task of this instance is left there and the services that
    had one run all their tasks elsewhere (unless `force`), then remove it from the swarm.

    A node whose tasks do not move within `timeout` (a service that cannot run anywhere else) is
    left drained and the removal refused, saying what is still there; `force` removes it anyway.
    """
    check_removable(node, force)
    engine = platform.engine
    before = left_on(node, engine.instance_tasks())
    moving = {task.service for task in before if task.desired == "running"}
    if node.availability != "drain":
        engine.drain_node(node.id)
        platform.store.audit(actor, "nodes:drain", node.name, f"id {node.id}")
    on_progress(f"{node.name} drained: swarm stops its tasks there and starts them on other nodes")
    if not force:
        _wait_until_moved(platform, node, moving, on_progress, stop, timeout)
    current = find(engine.nodes(), node.id)
    was_up = current.state != "down"
    on_progress(f"removing {node.name} from the swarm")
    # Swarm refuses a node that still answers unless forced; it is drained, so nothing is lost.
    engine.remove_node(node.id, force=was_up)
    platform.store.audit(actor, "nodes:remove", node.name, f"id {node.id}" + (" (forced)" if force else ""))
    return Removed(current, was_up)


def _wait_until_moved(platform: Platform, node: SwarmNode, moving: set[str], on_progress: Progress,
                      stop: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    said = ""
    while True:
        current = find(platform.engine.nodes(), node.id)  # its state: a node that went down stops counting
        # Asked each time: a scale (or a deploy) may change how many tasks a service wants meanwhile.
        replicas = platform.engine.instance_replicas()
        wanted = {service: replicas[service] for service in moving if replicas.get(service)}
        tasks = platform.engine.instance_tasks()
        left = left_on(current, tasks)
        short = short_of_replicas(wanted, tasks, node.id)
        if not left and not short:
            return
        message = _waiting(node, left, short)
        if message != said:
            on_progress(message)
            said = message
        if stop():
            raise NodeError(f"stopped waiting: {node.name} stays drained; run nodes:remove again to remove it",
                            ErrorKind.CONFLICT)
        if time.monotonic() > deadline:
            raise NodeError(f"{node.name} is drained, but after {timeout:.0f} s {message.removeprefix('waiting: ')}; "
                            "run nodes:remove again, or add --force to remove it anyway", ErrorKind.CONFLICT)
        time.sleep(REMOVE_POLL)


def _waiting(node: SwarmNode, left: list[TaskPlacement], short: dict[str, int]) -> str:
    parts = []
    if left:
        parts.append(f"{len(left)} task(s) of this server's services still on {node.name}")
    if short:
        parts.append("not yet running elsewhere: " + ", ".join(f"{s} ({n} task(s))" for s, n in sorted(short.items())))
    return "waiting: " + "; ".join(parts)
