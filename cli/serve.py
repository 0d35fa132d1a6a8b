"""`disco serve`: the composition root, the one place that builds the daemon's parts and runs
them in one event loop (git over SSH, the API, deploys, with the proxy starting beside them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from api.app import build_app
from api.endpoints import ENDPOINTS
from gitserver.repos import RepoRegistry
from gitserver.server import GitServer
from hooks import disks, registry, sessions
from hooks.dockerwatch import DockerWatch
from hooks.errors import Refused
from hooks.platform import Platform
from hooks.scheduler import fast_clock
from runtime import ipsec
from runtime.backup import BackupError, daily_backup
from runtime.caddy import API_SOCKET_NAME, CaddyAdmin
from runtime.docker_engine import DockerError, Engine
from runtime.memory import give_back_freed_memory, leave_start_up_objects_out_of_collections, use_few_malloc_arenas
from runtime.secretbox import SecretError
from runtime.settings import Settings, ensure_layout, write_default_config
from runtime.store import Store

log = logging.getLogger("disco")


def serve(settings: Settings) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT."""
    use_few_malloc_arenas()  # first: before any thread of the daemon's has an arena of its own
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    # Their per-packet chatter would drown our one line per connection and push.
    for chatty in ("asyncssh", "dulwich", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    ensure_layout(settings)
    write_default_config(settings)
    store = Store(settings.db_path)
    store.checkpoint_in_background()  # no API write waits for the WAL's copy into the database
    try:
        asyncio.run(_run(settings, store))
    finally:
        store.close()


async def _run(settings: Settings, store: Store) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    encryption = ipsec.choose(settings.overlay_encryption, *ipsec.esp_supported())
    log.info("overlay encryption %s", encryption.why)
    platform = Platform.create(settings, store, Engine(settings.instance, encryption.on),
                               CaddyAdmin(settings.run_dir), **_scheduler_clock())
    for settled in platform.deployer.recover():
        log.info("deployment #%d of %s left unfinished: now %s", settled.number, settled.project, settled.status)
    for run in platform.scheduler.recover():
        log.info("scheduled run #%d of %s/%s left unfinished: now %s", run.id, run.project, run.service, run.status)
    sessions.forget_old(store)  # dashboard sessions and links past use, so the table stays small
    platform.scheduler.start()
    # Says when dockerd goes away and comes back, and checks the proxy again on its return.
    docker_watch = DockerWatch(platform.engine.reachable, on_back=lambda: _start_proxy(platform, settings))
    docker_watch.start()
    threading.Thread(target=disks.watch, args=(platform,), name="disk-watch", daemon=True).start()  # the 90% warning
    if settings.backup_dir:
        threading.Thread(target=_daily_backups, args=(settings,), name="backups", daemon=True).start()
    # Not awaited, and a daemon thread: SIGTERM stops the daemon at once even while Caddy is
    # still starting (or never will, with an image that cannot run); the next start goes on.
    threading.Thread(target=_start_proxy, args=(platform, settings), name="proxy", daemon=True).start()
    git = GitServer(platform, RepoRegistry(settings.repos_dir))
    await git.start(settings.listen)
    api = EmbeddedServer(uvicorn.Config(build_app(platform, ENDPOINTS.endpoints), log_level="warning", lifespan="off",
                                        timeout_graceful_shutdown=10))
    api_task = asyncio.create_task(api.serve(sockets=api_sockets(settings)))
    log.info("ready (data dir %s, instance %s)", settings.data_dir, settings.instance)
    give_back_freed_memory()  # what start-up freed (imports, recovery, the SSH host key)
    leave_start_up_objects_out_of_collections()
    await stop.wait()
    log.info("shutting down")
    docker_watch.stop()
    scheduler_stopped = asyncio.create_task(asyncio.to_thread(platform.scheduler.stop))  # runs going on end
    api.should_exit = True
    await git.stop()
    await scheduler_stopped
    await api_task  # a deploy still running is left to swarm; the next start settles its record


def _daily_backups(settings: Settings) -> None:
    """A backup of the data dir each day into --backup-dir, the newest --backup-keep kept;
    checked each hour, so a daemon restarted often still makes one a day."""
    while True:
        try:
            made = daily_backup(settings.data_dir, Path(settings.backup_dir), settings.backup_keep)
            if made is not None:
                log.info("backup written: %s (%d repos, %d bytes)", made.path, made.repos, made.size)
        except (BackupError, OSError, sqlite3.Error) as err:
            log.error("the daily backup failed: %s", err)
        time.sleep(3600)


def _scheduler_clock() -> dict[str, Any]:
    """The real clock, ticking each second. DISCO_TEST_CLOCK=ANCHOR:SPEED (tests only) makes
    time run SPEED times faster since the Unix time ANCHOR, so an every-minute schedule fires
    every few seconds."""
    test_clock = os.environ.get("DISCO_TEST_CLOCK")
    if not test_clock:
        return {}
    anchor, _, speed = test_clock.partition(":")
    log.warning("DISCO_TEST_CLOCK=%s: scheduled services run on a clock %sx faster (tests only)", test_clock, speed)
    return {"clock": fast_clock(float(anchor), float(speed)), "tick_seconds": max(0.1, 1 / float(speed))}


def _start_proxy(platform: Platform, settings: Settings) -> None:
    platform.router.start_proxy()
    if platform.router.proxy_error:
        log.error("%s", platform.router.proxy_error)
    else:
        log.info("proxy up on ports %d/%d", settings.http_port, settings.https_port)
    try:
        log.info("%s", registry.resume(settings, platform.store, platform.engine))
    except (DockerError, Refused, SecretError, OSError) as err:
        log.error("the registry: %s", err)
    give_back_freed_memory()  # what starting the proxy freed


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside our event loop: the daemon, not uvicorn, owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def api_sockets(settings: Settings) -> list[socket.socket]:
    """The API on 127.0.0.1:<api-port> for this machine, and on run/api.sock for Caddy."""
    # proto must say TCP: asyncio only sets TCP_NODELAY on such sockets, and without it small
    # responses wait ~40 ms for the client's delayed ACK (Nagle).
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", settings.api_port))
    path = settings.run_dir / API_SOCKET_NAME
    path.unlink(missing_ok=True)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(path))
    os.chmod(path, 0o660)
    for sock in (tcp, unix):
        sock.listen(512)
        sock.set_inheritable(True)
    return [tcp, unix]
