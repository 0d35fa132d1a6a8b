"""The SSH front door: public-key auth, the git commands, and nothing else.

Team members are recognised by their SSH key alone (the SSH user name is ignored, `git@` is
the convention). Every channel runs one git command, or prints who you are and how to push.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncssh

from gitserver.repos import RepoRegistry
from hooks import pipeline
from hooks.platform import Platform
from hooks.policy import Access, PolicyError, project_from_path
from runtime.memory import give_back_freed_memory
from runtime.settings import Settings
from runtime.sshkeys import fingerprint_of, load_or_create_host_key
from runtime.store import Store, User

if TYPE_CHECKING:
    from gitserver.gitproto import ChannelIO, PushContext

log = logging.getLogger("disco.ssh")

# What the SSH server encrypts with: asyncssh's defaults less chacha20-poly1305, which asyncssh
# computes with three cipher set-ups and a copy of each packet in Python. git's ssh sends a push
# in packets of about 10 KB, so that cost most of the gap to a local push: a 100 MB push took
# 1.71 s with it, 1.51 s with AES, 1.26 s over file:// (issue 15). Every client that speaks
# chacha20 speaks AES-CTR (RFC 4344), and OpenSSH, which asks for chacha20 first, takes AES-CTR
# next, with the first MAC of its list both sides have; those that ask for AES-GCM first get it.
ENCRYPTION_ALGS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr"]

GIT_SERVICES = {"git-receive-pack": Access.WRITE, "git-upload-pack": Access.READ}


@dataclass
class GitServer:
    """The daemon's SSH side: holds what every connection shares.

    What one user may cost it: `max_ssh_sessions` git sessions at once (the next is refused at
    once), each closed when its client sends nothing for `ssh_idle_timeout` seconds. Each git
    session runs in a thread of its own rather than in a shared pool, so the sessions of one
    user (at most the cap, idle ones closed) can never leave another user's waiting for a thread;
    the threads in use are bounded by the cap times the team's size.
    """

    platform: Platform
    repos: RepoRegistry
    sessions: set[asyncio.Task] | None = None
    _acceptor: asyncssh.SSHAcceptor | None = None
    _open: Counter[str] = field(default_factory=Counter)  # git sessions per user, on the event loop

    @property
    def settings(self) -> Settings:
        return self.platform.settings

    @property
    def store(self) -> Store:
        return self.platform.store

    async def start(self, host: str = "") -> None:
        self.sessions = set()
        self.repos.sweep_all()
        host_key = load_or_create_host_key(self.settings.host_key_path)
        self._acceptor = await asyncssh.create_server(
            lambda: _Connection(self),
            host,
            self.settings.ssh_port,
            server_host_keys=[host_key],
            process_factory=self._run_session,
            encoding=None,
            allow_pty=False,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            line_editor=False,
            keepalive_interval=30,
            encryption_algs=ENCRYPTION_ALGS,
        )
        log.info("git over SSH listening on port %d", self.settings.ssh_port)

    async def stop(self, grace: float = 60.0) -> None:
        """Stop accepting connections, then let sessions in flight finish (within `grace`)."""
        if self._acceptor:
            self._acceptor.close()
        if self.sessions:
            log.info("waiting for %d session(s) to finish", len(self.sessions))
            _, pending = await asyncio.wait(self.sessions, timeout=grace)
            for task in pending:
                task.cancel()
        if self._acceptor:
            await self._acceptor.wait_closed()

    async def _run_session(self, process: asyncssh.SSHServerProcess) -> None:
        # Here, not at the top: the git protocol and pack code, and dulwich with them, load with
        # the first session; an idle daemon does without their ~4 MB.
        from gitserver.gitproto import BadClient, ClientIdle

        task = asyncio.current_task()
        assert task is not None and self.sessions is not None
        user: User = process.get_extra_info("disco_user")
        counted = process.command is not None  # a git command (the greeting holds nothing)
        if counted and self._open[user.name] >= self.settings.max_ssh_sessions:
            log.info("refused a session of %s: %d open", user.name, self._open[user.name])
            process.exit(_refuse(process, f"too many git sessions open for {user.name} "
                                          f"({self.settings.max_ssh_sessions}); close some and retry"))
            return
        if counted:
            self._open[user.name] += 1
        self.sessions.add(task)
        work = _Work()
        try:
            try:
                status = await self._dispatch(process, work)
            except (ClientIdle, BadClient) as err:
                log.info("session of %s closed: %s", user.name, err)
                status = _refuse(process, f"closed: {err}")
            except (asyncssh.Error, BrokenPipeError, ConnectionError) as err:
                log.info("session of %s ended early: %s", user.name, err)
                status = 1
            finally:
                self.sessions.discard(task)
                if counted:
                    self._open[user.name] -= 1
                    if not self._open[user.name]:
                        del self._open[user.name]
            if not process.is_closing():
                process.exit(status)
        finally:
            if work.ran_git:  # after the answer: the client need not wait for a collection and malloc_trim
                await asyncio.to_thread(give_back_freed_memory)  # what the session's thread freed in its arena

    async def _dispatch(self, process: asyncssh.SSHServerProcess, work: _Work) -> int:
        from gitserver.gitproto import ChannelIO, PushContext, PushLimits  # lazy: see _run_session

        user: User = process.get_extra_info("disco_user")
        if process.command is None:
            _tell(process, self._greeting(user))
            return 1
        try:
            service, path = parse_git_command(process.command)
            project = project_from_path(path)
            access = GIT_SERVICES[service]
            pipeline.check_push(self.platform, user, project, access)
        except PolicyError as err:
            log.info("refused %s: %s", user.name, err)
            return _refuse(process, str(err))
        if access is Access.READ and not self.repos.exists(project):
            return _refuse(process, f"project {project!r} has no code yet: push to it first")
        io = ChannelIO(process, asyncio.get_running_loop(), idle_timeout=self.settings.ssh_idle_timeout or None)
        work.ran_git = True
        if access is Access.READ:
            await _in_own_thread(f"git-fetch-{user.name}", self._fetch, project, io)
            log.info("fetch user=%s project=%s", user.name, project)
            return 0
        context = PushContext(
            platform=self.platform,
            project=project,
            user=user.name,
            limits=PushLimits(
                max_input_size=self.settings.max_push_size,
                max_object_size=self.settings.max_object_size,
                max_inflated_size=self.settings.max_push_inflated_size,
            ),
            ref_lock=self.repos.ref_lock(project),
        )
        await _in_own_thread(f"git-push-{user.name}", self._push, project, io, context)
        _log_push(context)
        return 1 if context.failure or context.refused else 0

    def _fetch(self, project: str, io: ChannelIO) -> None:
        from gitserver.gitproto import run_upload_pack  # lazy: see _run_session

        with self.repos.session(project), self.repos.open(project) as repo:
            run_upload_pack(repo, io)

    def _push(self, project: str, io: ChannelIO, context: PushContext) -> None:
        from gitserver.gitproto import run_receive_pack  # lazy: see _run_session

        # Authorised already: a first push (or one to a project made through the API) makes the repo.
        with self.repos.session(project, create=True), self.repos.open(project) as repo:
            run_receive_pack(repo, io, context)

    def _greeting(self, user: User) -> str:
        port = self.settings.ssh_port
        host = self.settings.public_host
        remote = f"ssh://git@{host}:{port}/<project>" if port != 22 else f"git@{host}:<project>"
        return (
            f"Hi {user.name}! You are signed in to Disco as {user.role}; there is no shell here.\n"
            f"To deploy, push with git:  git remote add disco {remote} && git push disco main"
        )


@dataclass
class _Work:
    """What a git session did that the daemon tidies once the client has its answer."""

    ran_git: bool = False  # a push or fetch ran in a thread of its own: what it freed goes back to the system


class _Connection(asyncssh.SSHServer):
    """One SSH connection: public-key auth only, no forwarding of any kind."""

    def __init__(self, server: GitServer) -> None:
        self._server = server
        self._conn: asyncssh.SSHServerConnection | None = None
        self._peer = "?"
        self._candidate: User | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        host, port = conn.get_extra_info("peername")[:2]
        self._peer = f"{host}:{port}"
        _acknowledge_at_once(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        who = self._conn.get_extra_info("disco_user") if self._conn else None
        log.info("disconnect peer=%s user=%s%s", self._peer, who.name if who else "-", f" error={exc}" if exc else "")

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Also called for keys the client only offers; the user is trusted in auth_completed,
        # which follows the one whose signature was verified.
        self._candidate = self._server.store.user_for_key(fingerprint_of(key))
        return self._candidate is not None

    def auth_completed(self) -> None:
        assert self._conn is not None and self._candidate is not None
        self._conn.set_extra_info(disco_user=self._candidate)
        log.info("connect peer=%s user=%s", self._peer, self._candidate.name)


def _acknowledge_at_once(conn: asyncssh.SSHServerConnection) -> None:
    """Acknowledge what the client sends as soon as it is read, not up to 40 ms later.

    An SSH client without a terminal (git's) leaves Nagle's algorithm on: it holds back a
    small message until the one before is acknowledged, and Linux delays that acknowledgement
    by up to 40 ms when the server has nothing to send back. The key exchange, the login and
    a push's commands are small messages in a row: two or three such waits were most of the
    time a connection took to open. TCP_QUICKACK sends the pending acknowledgement now; the
    kernel goes back to delaying them by itself, so it is set again after each read.
    """
    sock = conn.get_extra_info("socket")
    quickack = getattr(socket, "TCP_QUICKACK", None)  # Linux only
    if sock is None or quickack is None:
        return
    receive = conn.data_received

    def data_received(data: bytes, datatype: asyncssh.DataType = None) -> None:
        with contextlib.suppress(OSError):  # a socket closing under us: the read says so
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        receive(data, datatype)

    # The transport calls the connection's data_received for each read; this one comes first.
    conn.data_received = data_received  # type: ignore[method-assign]


async def _in_own_thread(name: str, function: Callable[..., None], *args: object) -> None:
    """Run a blocking git handler in a new thread; wait for it without blocking the loop.

    A daemon thread: a session still running when the daemon exits (after stop's grace) must
    not hold the process up.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():  # the session was cancelled (shutdown): nobody waits for this any more
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        try:
            function(*args)
        except BaseException as err:  # noqa: BLE001 (handed to the awaiting session, which decides)
            loop.call_soon_threadsafe(settle, err)
        else:
            loop.call_soon_threadsafe(settle, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    await done


def parse_git_command(command: str) -> tuple[str, str]:
    """Split `git-receive-pack '/myapp.git'` into (service, path); refuse anything else."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = []
    if len(words) == 3 and words[0] == "git":  # "git receive-pack 'x'" from some clients
        words = [f"git-{words[1]}", words[2]]
    if len(words) != 2 or words[0] not in GIT_SERVICES:
        raise PolicyError(
            f"command {command[:60]!r} is not allowed: Disco only accepts git push and git fetch"
        )
    return words[0], words[1]


def _tell(process: asyncssh.SSHServerProcess, text: str) -> None:
    process.stderr.write(text.encode() + b"\n")


def _refuse(process: asyncssh.SSHServerProcess, reason: str) -> int:
    _tell(process, f"disco: {reason}")
    return 1


def _log_push(context: PushContext) -> None:
    moved = " ".join(f"{u.short_ref}:{u.old_sha[:7]}..{u.new_sha[:7]}" for u in context.updated)
    refused = "; ".join(f"{ref}: {why}" for ref, why in context.refused)
    result = "failed: " + context.failure if context.failure else ("refused: " + refused if refused else "ok")
    log.info("push user=%s project=%s refs=%s result=%s", context.user, context.project, moved or "-", result)
