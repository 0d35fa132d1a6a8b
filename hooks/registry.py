"""Which registry carries a deployment's images to the swarm's other nodes, and the daemon's own.

With one node nothing is pushed: images are where they were built. With more, each deployment
pushes its images (hooks/deployment.py) to the external registry of `--registry`, or to the
daemon's own, which `disco nodes:add` makes the first time (a second node cannot join without
one: it could run none of the apps). The own registry's files live in DATA_DIR/registry: its
config, a self-signed certificate for the manager's address and its key, the htpasswd entry
of its one user, and that user's password sealed with the store's key (runtime/secretbox.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hooks.engine import DeployEngine
from hooks.errors import ErrorKind, Refused
from runtime import registry
from runtime.docker_engine import DockerError, Engine
from runtime.registry import RegistryAccess
from runtime.secretbox import SecretError
from runtime.settings import Settings
from runtime.store import Store

log = logging.getLogger("disco.registry")

COLLECTION_WAIT = 600.0  # seconds a garbage collection waits for the pushes under way to end
READY_TIMEOUT = 180.0  # seconds the own registry has to answer a login once its service is made (a busy node)


class _PushesOrCollection:
    """Any number of pushes at once, or one garbage collection alone: a layer a push is still
    uploading belongs to no image yet, and a collection running then would delete it. A
    collection waiting holds new pushes back (else overlapping pushes could keep it waiting
    for ever), and gives up after `timeout`: the next prune collects."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._pushes = 0
        self._collecting = False
        self._waiting = 0  # collections waiting for the pushes under way to end

    @contextlib.contextmanager
    def push(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._collecting and not self._waiting)
            self._pushes += 1
        try:
            yield
        finally:
            with self._changed:
                self._pushes -= 1
                self._changed.notify_all()

    @contextlib.contextmanager
    def collection(self, timeout: float = COLLECTION_WAIT) -> Iterator[bool]:
        """Yields whether it may collect now (False: it waited `timeout` in vain)."""
        with self._changed:
            self._waiting += 1
            free = self._changed.wait_for(lambda: not self._collecting and not self._pushes, timeout)
            self._waiting -= 1
            if free:
                self._collecting = True
            self._changed.notify_all()
        try:
            yield free
        finally:
            if free:
                with self._changed:
                    self._collecting = False
                    self._changed.notify_all()


PUSHES_OR_COLLECTION = _PushesOrCollection()


class RegistryProblem(Refused):
    """No registry can carry images now; the message says why and what to do."""


def own_dir(settings: Settings) -> Path:
    return settings.data_dir / "registry"


def configured(settings: Settings, store: Store) -> RegistryAccess | None:
    """The registry images go through when there are several nodes: the external one, or the
    daemon's own once it was made; None before."""
    if settings.registry:
        return _external(settings)
    folder = own_dir(settings)
    try:
        ca_pem = (folder / "cert.pem").read_text()
        password = store.secrets.open((folder / "password").read_text())
        host = registry.certificate_host(ca_pem)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, SecretError) as err:
        raise RegistryProblem(f"the daemon's own registry's files in {folder} are unreadable ({err}): move the "
                              "folder away and run `disco nodes:add` to make the registry again, then run the "
                              "join command it prints on each node", ErrorKind.CONFLICT) from None
    address = f"[{host}]:{settings.registry_port}" if ":" in host else f"{host}:{settings.registry_port}"
    return RegistryAccess(address=address, username=registry.USER, password=password, ca_pem=ca_pem)


def _external(settings: Settings) -> RegistryAccess:
    if not settings.registry_user or not settings.registry_password_file:
        raise RegistryProblem(f"--registry {settings.registry} needs --registry-user and --registry-password-file")
    try:
        password = Path(settings.registry_password_file).read_text().strip()
    except OSError as err:
        raise RegistryProblem(f"cannot read --registry-password-file: {err.strerror}: "
                              f"{settings.registry_password_file}") from None
    return RegistryAccess(address=settings.registry, username=settings.registry_user, password=password)


def ensure(settings: Settings, store: Store, engine: Engine, host: str) -> RegistryAccess:
    """The registry a new node will pull from, answering: the external one (its login is
    checked), or the daemon's own, made now for the manager's address `host` if need be."""
    access = configured(settings, store)
    if access is not None and not access.ca_pem:  # external
        _wait_for_login(engine, access, timeout=0)
        return access
    if access is None or registry.certificate_host(access.ca_pem) != host:
        # A new address (the swarm made again on another one) needs a new certificate: nodes
        # that joined before must run the new join command to trust it.
        access = _make_own(settings, store, host)
        log.info("made the daemon's own registry at %s", access.address)
    start_own(settings, engine, access)
    _wait_for_login(engine, access, READY_TIMEOUT)
    return access


def start_own(settings: Settings, engine: Engine, access: RegistryAccess) -> None:
    """Its service running on this node (restarted when its files changed), and this node's
    engine trusting its certificate."""
    try:
        access.trust()
    except registry.RegistryError as err:
        raise RegistryProblem(str(err), ErrorKind.CONFLICT) from None
    folder = own_dir(settings)
    files = hashlib.sha256(b"".join((folder / name).read_bytes() for name in ("cert.pem", "htpasswd"))).hexdigest()
    if engine.ensure_registry(settings.registry_image, folder, settings.registry_port, files[:16]):
        log.info("the registry service started (%s)", settings.registry_image)


def for_deploy(settings: Settings, store: Store, engine: DeployEngine) -> RegistryAccess | None:
    """The registry this deployment pushes its images to: None while the swarm has one node
    (nothing to carry, whatever the registry settings), and while no registry was set (then
    the services stay on this node)."""
    if engine.node_count() < 2:
        return None
    return configured(settings, store)


def _make_own(settings: Settings, store: Store, host: str) -> RegistryAccess:
    folder = own_dir(settings)
    folder.mkdir(mode=0o700, exist_ok=True)
    cert_pem, key_pem = registry.self_signed_certificate(host)
    password = registry.new_password()
    _write(folder / "key.pem", key_pem, 0o600)
    _write(folder / "htpasswd", registry.htpasswd_line(registry.USER, password), 0o600)
    _write(folder / "config.yml", registry.own_config(), 0o644)
    _write(folder / "password", store.secrets.seal(password), 0o600)
    _write(folder / "cert.pem", cert_pem, 0o644)  # last: its presence says the rest is there
    made = configured(settings, store)
    assert made is not None
    return made


def _write(path: Path, text: str, mode: int) -> None:
    """Whole or not at all (a daemon stopped halfway leaves the old file or none), and never
    readable by others on the way."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w") as file:
        file.write(text)
    os.chmod(partial, mode)  # whatever the umask took away
    partial.replace(path)


def _wait_for_login(engine: Engine, access: RegistryAccess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            engine.log_in(access, fresh=True)
            return
        except DockerError as err:
            if time.monotonic() >= deadline:
                raise RegistryProblem(f"the registry at {access.address} does not answer: {err}",
                                      ErrorKind.CONFLICT) from None
        time.sleep(0.5)


def pushed_to(settings: Settings, store: Store) -> RegistryAccess | None:
    """The registry a pruned image may also be in (None if none, or if it cannot be used now:
    a cleanup goes on without it)."""
    try:
        return configured(settings, store)
    except RegistryProblem as err:
        log.warning("pruned images stay in the registry: %s", err)
        return None


def forget(engine: DeployEngine, access: RegistryAccess, pruned: list[str], kept: list[str],
           on_line: Callable[[str], None]) -> None:
    """Pruned images go from the registry too, and their registry-named tags from this node;
    the daemon's own registry then frees their layers (an external one, by its own schedule).

    The registry deletes by digest, and a digest's every tag with it: a rollback or an env
    change tags the same image again, so a pruned tag may share its digest with a kept one.
    Only digests no kept tag names are deleted."""
    deleted = 0
    try:
        kept_digests = {registry.manifest_digest(access, access.reference(tag)) for tag in kept}
        for tag in pruned:
            engine.remove_image(access.reference(tag))
            digest = registry.manifest_digest(access, access.reference(tag))
            if digest is not None and digest not in kept_digests:
                deleted += registry.delete_manifest(access, tag.rpartition(":")[0], digest)
    except registry.RegistryError as err:
        on_line(f"warning: pruned images stay in the registry: {err}")
    if deleted and access.ca_pem:
        with PUSHES_OR_COLLECTION.collection() as free:
            if not free:
                on_line("warning: the registry's garbage collection waited for pushes in vain: the next prune "
                        "collects")
                return
            try:
                said = engine.collect_registry_garbage()
            except DockerError as err:
                on_line(f"warning: {err}")
                return
        on_line(f"registry: {deleted} image(s) deleted; {said}")


def prune_other_nodes(settings: Settings, engine: DeployEngine, access: RegistryAccess,
                      on_line: Callable[[str], None]) -> None:
    """The other nodes drop the images no task of theirs runs any more: a job on each (with the
    docker client's image, which they pull from the registry like an app's)."""
    with PUSHES_OR_COLLECTION.push():
        image = engine.push(settings.docker_cli_image, access, lambda line: None)
    engine.prune_other_nodes(image, settings.docker_socket)
    on_line("pruning unused images on the other nodes")


def resume(settings: Settings, store: Store, engine: Engine) -> str:
    """At start: the daemon's own registry running again (as this version and its settings
    want it) if it was made; what carries images to other nodes, for the log."""
    access = configured(settings, store)
    if access is None:
        return "no registry: a project's services run on this server's node"
    if access.ca_pem:
        start_own(settings, engine, access)
        return f"images reach other nodes through the daemon's own registry at {access.address}"
    return f"images reach other nodes through the registry at {access.address}"
