"""dulwich's receive-pack and upload-pack, run in a worker thread over an SSH channel.

dulwich's handlers are blocking, asyncssh is not: `ChannelIO` gives the worker thread blocking
read and write calls that hop onto the event loop and wait there, which also gives us
back-pressure (a write waits for the channel to drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import zlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar, cast

import asyncssh
from dulwich.file import _GitFile
from dulwich.errors import ApplyDeltaError, ChecksumMismatch, GitProtocolError, HangupException, ObjectFormatException
from dulwich.object_store import DiskObjectStore, PackInputTooLarge
from dulwich.objects import ObjectID
from dulwich.pack import (
    DELTA_TYPES,
    PackData,
    PackIndexer,
    PackStreamCopier,
    UnpackedObject,
)
from dulwich.protocol import (
    CAPABILITY_SIDE_BAND_64K,
    SIDE_BAND_CHANNEL_PROGRESS,
    ReceivableProtocol,
)
from dulwich.refs import Ref
from dulwich.repo import Repo
from dulwich.server import (
    BackendRepo,
    DictBackend,
    ReceivePackHandler,
    UploadPackHandler,
)

from hooks import holds, pipeline
from hooks.pipeline import RefUpdate
from hooks.platform import Platform
from runtime import disk

log = logging.getLogger("disco.git")
T = TypeVar("T")

# Errors dulwich raises for a broken or truncated pack; anything else is a bug and propagates.
PACK_ERRORS = (OSError, ChecksumMismatch, ApplyDeltaError, ObjectFormatException, zlib.error, AssertionError)
PACK_HEADER_SIZE = 12  # "PACK", version, object count


@dataclass(frozen=True)
class PushLimits:
    """What one push may cost: bytes on the wire, and bytes once its objects are inflated."""

    max_input_size: int  # the pack as sent (compressed)
    max_object_size: int  # any one object, inflated (for a delta: the object it makes)
    max_inflated_size: int  # all the push's objects, inflated


class PushTooLarge(Exception):
    """A pack refused by a limit; str() is the reason shown to the pusher."""


OBJECT_FLOOR = 4096  # what the smallest object counts for against max_push_inflated_size


class LimitedPackCopier(PackStreamCopier):
    """dulwich's PackStreamCopier that refuses an object by its declared size, before inflating it.

    dulwich reads an object's header with `read()` (byte by byte: type, size, delta base), then
    inflates its zlib stream with `recv()`, and only calls `read()` again for the next header.
    So the bytes `read()` returned since the last stream are that object's header, and the first
    `recv()` of an object is the moment its size is declared and nothing is inflated yet.
    A delta declares only its own size there; the size of the object it makes is the second
    number of the delta itself, checked once the (small) delta is read and before the indexer
    applies it.
    """

    def __init__(self, hash_func: Callable[[], Any], read_all: Callable[[int], bytes],
                 read_some: Callable[[int], bytes] | None, outfile: IO[bytes], limits: PushLimits,
                 delta_iter: PackIndexer | None = None) -> None:
        super().__init__(hash_func, read_all, read_some, outfile, delta_iter=delta_iter)  # type: ignore[arg-type]
        self.limits = limits
        self.inflated_size = 0  # declared so far
        self._header: bytearray | None = bytearray()  # None while inside an object's zlib stream

    def _read(self, read: Callable[[int], bytes], size: int) -> bytes:
        data = super()._read(read, size)
        if self._offset > self.limits.max_input_size:
            raise PackInputTooLarge(f"pack exceeds maximum input size of {self.limits.max_input_size} bytes")
        return data

    def read(self, size: int) -> bytes:
        start = self.offset
        data = super().read(size)
        if self._header is None:  # a stream ended: this is the next object's header
            self._header = bytearray()
        self._header += data[max(0, PACK_HEADER_SIZE - start):]
        return data

    def recv(self, size: int) -> bytes:
        if self._header is not None:
            self._check_header(bytes(self._header))
            self._header = None
        return super().recv(size)

    def read_objects(self, compute_crc32: bool = False) -> Iterator[UnpackedObject]:
        for unpacked in super().read_objects(compute_crc32):
            if unpacked.pack_type_num in DELTA_TYPES:
                self._declare(delta_target_size(b"".join(unpacked.decomp_chunks[:4])))
            yield unpacked

    def _check_header(self, header: bytes) -> None:
        if not header:
            raise AssertionError("pack object without a header")
        type_num, size = (header[0] >> 4) & 7, header[0] & 0x0F
        pos, shift = 0, 4
        while header[pos] & 0x80 and pos + 1 < len(header):  # a set top bit: the size goes on
            pos += 1
            size |= (header[pos] & 0x7F) << shift
            shift += 7
        if type_num in DELTA_TYPES:
            self._check_object(size)  # a delta larger than an object may be makes one too large
        else:
            self._declare(size)

    def _check_object(self, size: int) -> None:
        if size > self.limits.max_object_size:
            raise PushTooLarge(f"push too large: object of {_human_size(size)} exceeds the "
                               f"{_human_size(self.limits.max_object_size)} limit")

    def _declare(self, size: int) -> None:
        self._check_object(size)
        # Every object costs dulwich's indexing memory and time however small it is: millions
        # of empty blobs (ten bytes each on the wire) must not get through as "nothing".
        self.inflated_size += max(size, OBJECT_FLOOR)
        if self.inflated_size > self.limits.max_inflated_size:
            raise PushTooLarge(f"push too large: its objects inflate to more than the "
                               f"{_human_size(self.limits.max_inflated_size)} limit "
                               f"(each counts at least {_human_size(OBJECT_FLOOR)})")


def delta_target_size(delta_start: bytes) -> int:
    """The size of the object a delta makes: the second varint at the start of the delta."""
    pos = 0
    sizes = []
    for _ in range(2):
        size = shift = 0
        while True:
            if pos >= len(delta_start):
                raise ApplyDeltaError("delta too short for its header")
            byte = delta_start[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        sizes.append(size)
    return sizes[1]


def add_limited_thin_pack(store: DiskObjectStore, read_all: Callable[[int], bytes],
                          read_some: Callable[[int], bytes] | None, limits: PushLimits) -> None:
    """`DiskObjectStore.add_thin_pack`, with `LimitedPackCopier` reading the stream.

    Its steps, dulwich's own: copy the stream to a temporary pack while recording deltas,
    index it, complete it into objects/pack. A refused or broken pack leaves no temporary file.
    """
    fd, path = tempfile.mkstemp(dir=store.path, prefix="tmp_pack_")
    try:
        with os.fdopen(fd, "w+b") as f:
            indexer = PackIndexer(f, store.object_format.hash_func, resolve_ext_ref=store.get_raw)
            copier = LimitedPackCopier(store.object_format.hash_func, read_all, read_some, f, limits,
                                       delta_iter=indexer)
            copier.verify()
            f.flush()
            holds.point("receive")  # the pack is a temporary file; nothing points at it yet
            f.seek(0)
            with PackData(path, file=f, object_format=store.object_format) as data:
                indexer.set_pack_data(data)
                entries, ext_refs = store._index_pack(indexer, len(copier))
            _complete_pack(store, f, path, entries, ext_refs)
    finally:
        if os.path.exists(path):  # moved into objects/pack when complete
            os.unlink(path)


@contextlib.contextmanager
def _no_lock_left_on_a_full_disk(repo_dir: str, name: str) -> Iterator[None]:
    """dulwich writes a ref (or an index) to `<name>.lock` and renames it; when the disk is full
    the write fails in its close, which leaves the lock file, and every later write of that ref
    fails as "locked" until someone removes it by hand. Remove ours, while the caller still
    holds what makes it ours (the project's ref lock)."""
    try:
        yield
    except OSError as err:
        if disk.is_disk_full(err):
            _forget_lock(err, os.path.join(repo_dir, name + ".lock"))
        raise


def _forget_lock(err: BaseException, lock_path: str) -> None:
    # dulwich's file object, still referenced from the traceback, would otherwise try again to
    # close (and remove the lock) whenever it is collected, maybe once another writer holds
    # it: close it for good now (its buffer cannot be written), then remove the lock ourselves.
    tb = err.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, _GitFile) and not value._closed:
                with contextlib.suppress(OSError):
                    value._file.close()
                value._closed = True
        tb = tb.tb_next
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path)


def _drop_unindexed_pack(store: DiskObjectStore, path: str, entries: list) -> None:
    """Undo a `_complete_pack` that failed after moving the pack in and before its index was
    written (a full disk): a .pack without its .idx is garbage git would keep forever.

    By then dulwich had added the missing bases to `entries` and sorted them in place, which
    is what names the pack; before the move, the temporary file is still there and the caller
    removes it.
    """
    if os.path.exists(path):
        return
    base = store._get_pack_basepath(entries)
    if not os.path.exists(base + ".idx"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(base + ".pack")


def _complete_pack(store: DiskObjectStore, f: IO[bytes], path: str, entries: list, ext_refs: set) -> None:
    """dulwich's `_complete_pack`, leaving nothing behind when the disk fills on the way: not
    the pack moved in without its index, nor the index's lock file (see _no_lock_left...)."""
    try:
        store._complete_pack(f, path, entries, ext_refs)  # type: ignore[arg-type]
    except OSError as err:
        _drop_unindexed_pack(store, path, entries)
        if disk.is_disk_full(err) and not os.path.exists(path):
            _forget_lock(err, store._get_pack_basepath(entries) + ".idx.lock")
        raise


class ClientIdle(Exception):
    """The client sent nothing (or took nothing) for the idle timeout: the session is closed.

    Not an OSError: dulwich turns those into protocol errors, and the pack reader into a
    broken pack; this one must reach the session as itself.
    """


class BadClient(Exception):
    """The client broke the git protocol (a malformed pkt-line or ref update, a stream cut
    short): the session ends, and str() says how. Without it dulwich's own error would escape
    the session and asyncssh would drop the whole connection without a word."""


class ChannelIO:
    """Blocking byte I/O for a worker thread, carried out on the event loop.

    A read that waits `idle_timeout` seconds for the client without a byte, or a write the
    client does not take in that time, raises ClientIdle, which ends the session and frees its
    thread. Time the server spends on its own (a push waiting for its deployment) is not idle:
    no read is waiting then.
    """

    def __init__(self, process: asyncssh.SSHServerProcess, loop: asyncio.AbstractEventLoop,
                 idle_timeout: float | None = None) -> None:
        self._process = process
        self._loop = loop
        self._idle_timeout = idle_timeout

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes; b"" once the client has closed its side."""
        return self._run(self._idle(self._process.stdin.read(size), "sent nothing"))

    def write(self, data: bytes) -> None:
        self._run(self._idle(self._write(data), "read nothing"))

    async def _write(self, data: bytes) -> None:
        self._process.stdout.write(data)
        await self._process.stdout.drain()

    async def _idle(self, waiting: Coroutine[Any, Any, T], what: str) -> T:
        try:
            return await asyncio.wait_for(waiting, self._idle_timeout)
        except TimeoutError:
            raise ClientIdle(f"the client {what} for {self._idle_timeout:g} s") from None

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


@dataclass
class PushContext:
    """What a receive-pack session needs to know, and what it learned."""

    platform: Platform
    project: str
    user: str
    limits: PushLimits
    ref_lock: threading.Lock  # shared by every push to this project
    updated: list[RefUpdate] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    failure: str | None = None


class SidebandReporter:
    """The pipeline's Reporter: lines go to the pusher as `remote:` lines as they come."""

    def __init__(self, handler: DiscoReceivePack) -> None:
        self._handler = handler

    def say(self, line: str) -> None:
        self._handler.progress(line)

    def fail(self, reason: str) -> None:
        self._handler.context.failure = reason
        self._handler.progress(f"error: {reason}")


class DiscoReceivePack(ReceivePackHandler):
    """dulwich's receive-pack with our checks, a size limit and compare-and-swap ref updates.

    dulwich reports "ok" when its compare-and-swap loses a race; we report the lost race,
    so of two concurrent pushes exactly one wins and the other is told the ref moved.
    """

    def __init__(self, repo: Repo, proto: ReceivableProtocol, context: PushContext) -> None:
        super().__init__(_backend(repo), ["/"], proto)
        self.context = context
        self._receivable = proto  # self.proto is typed as the plain Protocol, which has no recv

    @property
    def _repo_dir(self) -> str:
        return cast(Repo, self.repo).path

    def capabilities(self) -> list[bytes]:
        # No atomic pushes: every ref is checked and moved on its own.
        return [cap for cap in super().capabilities() if cap != b"atomic"]

    def progress(self, line: str) -> None:
        # Only a client that asked for side-band can tell a progress line from the status report.
        if self.has_capability(CAPABILITY_SIDE_BAND_64K):
            self.proto.write_sideband(SIDE_BAND_CHANNEL_PROGRESS, line.encode() + b"\n")

    def _apply_pack(self, refs: list[tuple[ObjectID, ObjectID, Ref]]) -> Iterator[tuple[bytes, bytes]]:
        if any(new != pipeline.ZERO_SHA.encode() for _, new, _ in refs):
            reason = self._receive_pack()
            if reason:
                yield (b"unpack", reason.encode())
                for _, _, ref in refs:
                    self.context.refused.append((ref.decode(errors="replace"), reason))
                    yield (ref, reason.encode())
                return
        yield (b"unpack", b"ok")
        for old, new, ref in refs:
            yield (ref, self._update_ref(ref, old, new).encode())

    def _receive_pack(self) -> str | None:
        """Store the incoming pack; return why it was refused, or None."""
        try:
            # Repo(path) always has a DiskObjectStore; the attribute is typed as its base class.
            store = cast(DiskObjectStore, self.repo.object_store)
            add_limited_thin_pack(store, self._receivable.read, self._receivable.recv, self.context.limits)
        except PushTooLarge as err:
            return str(err)
        except PackInputTooLarge:
            return f"push refused: the pack is larger than the server's limit of {_human_size(self.context.limits.max_input_size)}"
        except PACK_ERRORS as err:
            if disk.is_disk_full(err):
                log.warning("push to %s refused: the data dir is full (%s)", self.context.project, err)
                return disk.no_space("the push did not fit", self._repo_dir)
            return f"unpack failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        return None

    def _update_ref(self, ref: Ref, old: ObjectID, new: ObjectID) -> str:
        update = RefUpdate(
            project=self.context.project,
            # A ref that is not UTF-8 must reach the checks (which refuse it), not crash the session.
            ref=ref.decode(errors="surrogateescape"),
            old_sha=old.decode(),
            new_sha=new.decode(),
            user=self.context.user,
        )
        try:
            reason = pipeline.check_ref_update(self.context.platform, update)
            if reason is None:
                with self.context.ref_lock, _no_lock_left_on_a_full_disk(self._repo_dir, update.ref):
                    if update.is_delete:
                        moved = self.repo.refs.remove_if_equals(ref, old)
                    else:
                        moved = self.repo.refs.set_if_equals(ref, old, new)
                if not moved:
                    reason = "the ref moved while you pushed; fetch, then push again"
        except Exception as err:  # a ref or object the checks cannot read: refuse it, say why
            log.info("refused %s of %s: %r", update.ref, update.project, err)
            if disk.is_disk_full(err):
                reason = disk.no_space(f"{update.ref} could not be written", self._repo_dir)
            else:
                reason = f"cannot accept {update.ref}: {err}"
        if reason:
            self.context.refused.append((update.ref, reason))
            return reason
        self.context.updated.append(update)
        return "ok"

    def _on_post_receive(self, client_refs: list[tuple[ObjectID, ObjectID, Ref]]) -> None:
        # dulwich calls this once the refs have moved and before it sends the status report,
        # so whatever the pipeline says streams to the pusher first.
        try:
            undo = pipeline.after_receive(self.context.platform, self.context.updated, SidebandReporter(self))
            for update in undo:
                self._move_back(update)
        except Exception as err:  # a bug in a later step must not leave the pusher guessing
            if not disk.is_disk_full(err):
                log.exception("after-receive step failed for %s", self.context.project)
                self.context.failure = f"internal error after receive: {err}"
                self.progress(f"error: {self.context.failure}")
                return
            # Nothing could be recorded (the store or a log is full): no deployment went live,
            # so the refs go back to where they were and the same push works once there is room.
            log.warning("push to %s undone: the data dir is full (%s)", self.context.project, err)
            self.context.failure = disk.no_space("the push could not be recorded; it was undone", self._repo_dir)
            self.progress(f"error: {self.context.failure}")
            for update in self.context.updated:
                self._move_back(update)


    def _move_back(self, update: RefUpdate) -> None:
        """Undo a ref whose deployment failed, unless another push moved it since."""
        ref, new, old = Ref(update.ref.encode()), ObjectID(update.new_sha.encode()), ObjectID(update.old_sha.encode())
        with self.context.ref_lock, _no_lock_left_on_a_full_disk(self._repo_dir, update.ref):
            if update.old_sha == pipeline.ZERO_SHA:
                self.repo.refs.remove_if_equals(ref, new)
            else:
                self.repo.refs.set_if_equals(ref, new, old)


class _Protocol(ReceivableProtocol):
    """dulwich's protocol, reading what clients may send as the errors it should be:

    - an empty pkt-line ("0004", which git's protocol allows) is read as empty: dulwich asks for
      its zero bytes of content, and its reader asserts a size above zero;
    - a pkt-line with more than one NUL (the one that may start the capabilities) is a
      GitProtocolError: dulwich's capability parser unpacks the split into two, a ValueError.
    """

    def read_pkt_line(self) -> bytes | None:
        line = super().read_pkt_line()
        if line is not None and line.count(b"\0") > 1:
            raise GitProtocolError(f"a pkt-line holds more than one NUL: {line[:60]!r}")
        return line

    def read(self, size: int) -> bytes:
        return super().read(size) if size > 0 else b""

    def recv(self, size: int) -> bytes:
        return super().recv(size) if size > 0 else b""


def make_protocol(io: ChannelIO) -> ReceivableProtocol:
    return _Protocol(io.recv, io.write)


def run_receive_pack(repo: Repo, io: ChannelIO, context: PushContext) -> None:
    with _protocol_errors():
        DiscoReceivePack(repo, make_protocol(io), context).handle()


def run_upload_pack(repo: Repo, io: ChannelIO) -> None:
    with _protocol_errors():
        UploadPackHandler(_backend(repo), ["/"], make_protocol(io)).handle()


@contextlib.contextmanager
def _protocol_errors() -> Iterator[None]:
    """dulwich's errors for what the client sent, as BadClient."""
    try:
        yield
    except HangupException:
        raise BadClient("the client hung up in the middle of the git protocol") from None
    except GitProtocolError as err:
        raise BadClient(f"git protocol error: {str(err)[:200] or type(err).__name__}") from None


def _backend(repo: Repo) -> DictBackend:
    """dulwich's handlers open repos through a backend; ours holds the one repo of the session."""
    repos: dict[str, BackendRepo] = {"/": repo}
    return DictBackend(repos)


def _human_size(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.4g} {unit}"
        size /= 1024
    return f"{size:.4g} GiB"
