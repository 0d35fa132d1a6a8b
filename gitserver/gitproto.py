"""dulwich's receive-pack and upload-pack, run in a worker thread over an SSH channel.

dulwich's handlers are blocking, asyncssh is not: `ChannelIO` gives the worker thread blocking
read and write calls that hop onto the event loop and wait there, which also gives us
back-pressure (a write waits for the channel to drain).

dulwich speaks the protocol and moves the refs; the pack a push sends goes to `git index-pack`
as it arrives (checked against the limits on the way), which writes and indexes it on disk.
dulwich's own pack receiver holds every object whole in memory, and then some: a push of
large files made the daemon several times their size for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import glob
import hashlib
import logging
import os
import secrets
import struct
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn, TypeVar, cast

import asyncssh
from dulwich.errors import GitProtocolError, HangupException
from dulwich.file import _GitFile
from dulwich.object_store import DiskObjectStore, PackInputTooLarge
from dulwich.objects import ObjectID
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
HASH_SIZE = 20  # SHA-1: a ref-delta's base and the pack's trailer
OFS_DELTA, REF_DELTA = 6, 7
OBJECT_TYPES = (1, 2, 3, 4, OFS_DELTA, REF_DELTA)  # commit, tree, blob, tag and the two deltas
MAX_VARINT_BYTES = 10  # a size or offset that needs more than 64 bits is no size at all
DELTA_START = 2 * MAX_VARINT_BYTES  # enough of a delta for both of its sizes
# zlib is handed a stream this much at a time, and returns at most INFLATE_STEP of inflated
# bytes per call (counted, then dropped). Input left over when the output is cut short is
# copied by zlib each time: pieces no larger than what they inflate to keep that rare.
INPUT_STEP = 256 << 10
INFLATE_STEP = 1 << 20


class BrokenPack(Exception):
    """The stream is not a well-formed pack (or ends early); str() says where and how."""


# A broken or truncated pack, or one that did not fit on disk; anything else is a bug and propagates.
PACK_ERRORS = (OSError, BrokenPack)


class PackLimiter:
    """Follows a pack stream object by object, as it arrives in chunks of any size, and refuses
    it at the first object over a limit, before anything reads that object's data.

    It keeps nothing of the objects: each is inflated in steps to find where its zlib stream
    ends and to check it inflates to the size its header declares, and dropped. A delta
    declares only its own size in its header; the size of the object it makes is the second
    number of the delta itself, checked from its first inflated bytes. So whoever is handed
    only the bytes `feed` accepted (git index-pack, here) never meets an object over a limit
    with more than its first chunk of data.

    The checksum of a pack with objects is not checked here: git index-pack does that.
    """

    def __init__(self, limits: PushLimits) -> None:
        self.limits = limits
        self.size = 0  # bytes taken so far
        self.object_count: int | None = None  # from the pack header, once read
        self.objects = 0  # objects read completely
        self.inflated_size = 0  # declared so far (deltas: the size of the object they make)
        self.done = False
        self._step: Callable[[memoryview], int] = self._pack_header
        self._pending = bytearray()  # a header being read
        self._header = b""  # the pack's, once read
        self._object_start = 0  # where the current object starts in the pack
        self._declared = 0  # the current object's inflated size, from its header
        self._inflated = 0
        self._delta_start: bytearray | None = None  # a delta's first bytes, until its sizes are read
        self._zlib = zlib.decompressobj()
        self._slice = 0  # how much more of the current stream to hand zlib (see _start_data)
        self._stream_in = 0  # how much of it zlib was handed

    def feed(self, data: bytes) -> int:
        """Take the next chunk; return how many of its bytes belong to the pack (all of them
        until the pack's last byte). Raises PushTooLarge, PackInputTooLarge or BrokenPack."""
        room = self.limits.max_input_size - self.size + 1  # what fits, and one byte more to tell
        view = memoryview(data)[:room]
        pos = 0
        while pos < len(view) and not self.done:
            taken = self._step(view[pos:])
            pos += taken
            self.size += taken
        if self.size > self.limits.max_input_size:
            raise PackInputTooLarge(f"pack exceeds maximum input size of {self.limits.max_input_size} bytes")
        return pos

    def _broken(self, problem: str) -> BrokenPack:
        return BrokenPack(f"pack object {self.objects + 1} (at byte {self._object_start}): {problem}")

    def _fill(self, data: memoryview, wanted: int) -> int:
        """Add up to `wanted` bytes of a fixed-size part to `_pending`; return how many it took."""
        taken = min(wanted - len(self._pending), len(data))
        self._pending += data[:taken]
        return taken

    def _varint(self, data: memoryview, what: str) -> int | None:
        """Take the bytes of a variable-length number (a set top bit: another byte follows)
        into `_pending`; how many it took once complete, else None (it took all of `data`)."""
        for index, byte in enumerate(data):
            self._pending.append(byte)
            if len(self._pending) > MAX_VARINT_BYTES:
                raise self._broken(f"its {what} does not end")
            if not byte & 0x80:
                return index + 1
        return None

    def _pack_header(self, data: memoryview) -> int:
        taken = self._fill(data, PACK_HEADER_SIZE)
        if len(self._pending) == PACK_HEADER_SIZE:
            header = bytes(self._pending)
            if header[:4] != b"PACK":
                raise BrokenPack("the stream does not start with a pack header")
            version, count = struct.unpack(">LL", header[4:])
            if version not in (2, 3):
                raise BrokenPack(f"pack version {version} is not supported")
            if count * OBJECT_FLOOR > self.limits.max_inflated_size:  # git index-pack would allocate for them all
                raise PushTooLarge(f"push too large: its pack declares {count} objects, more than fit the "
                                   f"{_human_size(self.limits.max_inflated_size)} limit "
                                   f"(each counts at least {_human_size(OBJECT_FLOOR)})")
            self._header, self.object_count = header, count
            self._pending.clear()
            self._object_start = PACK_HEADER_SIZE
            self._step = self._object_header if count else self._trailer
        return taken

    def _object_header(self, data: memoryview) -> int:
        taken = self._varint(data, "header")
        if taken is None:
            return len(data)
        header = bytes(self._pending)
        self._pending.clear()
        type_num, size = (header[0] >> 4) & 7, header[0] & 0x0F
        for shift, byte in enumerate(header[1:]):
            size |= (byte & 0x7F) << (4 + 7 * shift)
        if type_num not in OBJECT_TYPES:
            raise self._broken(f"unknown type {type_num}")
        if type_num in (OFS_DELTA, REF_DELTA):
            self._check_object(size)  # a delta larger than an object may be makes one too large
            self._delta_start = bytearray()
        else:
            self._declare(size)
            self._delta_start = None
        self._declared, self._inflated = size, 0
        self._step = {OFS_DELTA: self._delta_offset, REF_DELTA: self._delta_base}.get(type_num, self._start_data)
        return taken

    def _delta_offset(self, data: memoryview) -> int:
        taken = self._varint(data, "delta offset")
        if taken is None:
            return len(data)
        return taken + self._start_data(data[taken:])

    def _delta_base(self, data: memoryview) -> int:
        taken = self._fill(data, HASH_SIZE)
        if len(self._pending) < HASH_SIZE:
            return taken
        return taken + self._start_data(data[taken:])

    def _start_data(self, data: memoryview) -> int:
        self._pending.clear()
        self._zlib = zlib.decompressobj()
        # zlib copies whatever follows the end of a stream (the next objects) out of what it
        # was handed: so hand it about what this stream should take, never the whole chunk.
        # deflate never makes data larger than this; a stream that is anyway gets more.
        self._slice = self._declared + self._declared // 2048 + 64
        self._stream_in = 0
        self._step = self._data
        return 0

    def _data(self, data: memoryview) -> int:
        """Inflate the next piece of the object's zlib stream."""
        stream = self._zlib
        handed = min(len(data), self._slice, INPUT_STEP)
        piece: memoryview | bytes = data[:handed]
        try:
            while True:
                # One byte more than the header declares, to catch an object that lies.
                step = min(INFLATE_STEP, self._declared - self._inflated + 1)
                out = stream.decompress(piece, step)
                self._count(out)
                piece = stream.unconsumed_tail
                if stream.eof or (not piece and len(out) < step):
                    break
        except zlib.error as err:
            raise self._broken(str(err)) from None
        if not stream.eof:
            self._stream_in += handed
            self._slice -= handed
            if self._slice <= 0:  # longer than deflate makes: as much again, then more
                self._slice = self._stream_in
            return handed
        if self._inflated != self._declared:
            raise self._broken(f"it inflates to {self._inflated} bytes, its header says {self._declared}")
        if self._delta_start is not None:  # a delta shorter than DELTA_START
            self._declare(delta_target_size(bytes(self._delta_start)))
        self.objects += 1
        self._object_start = self.size + handed - len(stream.unused_data)
        self._step = self._object_header if self.objects < (self.object_count or 0) else self._trailer
        return handed - len(stream.unused_data)

    def _count(self, out: bytes) -> None:
        self._inflated += len(out)
        if self._inflated > self._declared:
            raise self._broken(f"it inflates to more than the {self._declared} bytes its header says")
        start = self._delta_start
        if start is not None and len(start) < DELTA_START:
            start += out[:DELTA_START - len(start)]
            if len(start) == DELTA_START:  # enough: from here on the delta is only counted
                self._declare(delta_target_size(bytes(start)))
                self._delta_start = None

    def _trailer(self, data: memoryview) -> int:
        taken = self._fill(data, HASH_SIZE)
        if len(self._pending) == HASH_SIZE:
            # With objects, git index-pack checks the checksum; without, nothing else reads it.
            if not self.object_count and bytes(self._pending) != hashlib.sha1(self._header).digest():
                raise BrokenPack("the empty pack's checksum does not match")
            self.done = True
        return taken

    def _check_object(self, size: int) -> None:
        if size > self.limits.max_object_size:
            raise PushTooLarge(f"push too large: object of {_human_size(size)} exceeds the "
                               f"{_human_size(self.limits.max_object_size)} limit")

    def _declare(self, size: int) -> None:
        self._check_object(size)
        # Every object costs indexing memory and time however small it is: millions of empty
        # blobs (ten bytes each on the wire) must not get through as "nothing".
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
                raise BrokenPack("a delta is too short for its header")
            byte = delta_start[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        sizes.append(size)
    return sizes[1]


# How git says the disk is full (what runtime.disk counts as full): the C library's words for
# ENOSPC and EDQUOT, and its own when a write of the pack's index comes up short.
INDEX_PACK_FULL_DISK = ((errno.ENOSPC, (os.strerror(errno.ENOSPC), "Out of diskspace")),
                        (errno.EDQUOT, (os.strerror(errno.EDQUOT),)))
# Ask the channel for everything it holds, not a slice of it. asyncssh pauses a channel once
# a window's worth (2 MiB) waits unread, and buffers what still arrives; on resuming it grants
# the client a whole new window while that buffer is still full. Reading less than all of it
# at a time, the buffers grew by up to a window per pause, without bound: 35 MiB held at once
# during a 64 MiB push. A read as large as both buffers together empties them each time.
RECV_SIZE = 8 << 20
PIPE_SIZE = 1 << 20  # Linux's ceiling for a pipe an unprivileged process widens (/proc/sys/fs/pipe-max-size)


def add_limited_thin_pack(store: DiskObjectStore, recv: Callable[[int], bytes], limits: PushLimits) -> None:
    """Receive the pack `recv` reads into the repo: checked by PackLimiter as it passes, and
    written, completed (a thin pack's bases added) and indexed by `git index-pack` as it comes.

    git writes it as a temporary pack in objects/ (swept on start and after every session,
    as dulwich's were), moved into objects/pack once indexed. Nothing of the pack is held in
    memory here: only the chunk in hand. A refused or broken pack leaves no file behind.
    """
    limiter = PackLimiter(limits)
    objects_dir = os.fspath(store.path)
    temp = os.path.join(objects_dir, f"tmp_pack_{secrets.token_hex(8)}")
    indexer: IndexPack | None = None
    try:
        while not limiter.done:
            chunk = recv(RECV_SIZE)
            if not chunk:
                raise BrokenPack(f"the pack ended early, after {limiter.size} bytes")
            used = limiter.feed(chunk)
            if indexer is None and limiter.object_count:
                indexer = IndexPack(os.path.dirname(objects_dir), temp + ".pack")
            if indexer is not None:
                indexer.feed(memoryview(chunk)[:used])
        if indexer is None:  # no objects (a push of commits the repo has): nothing to store
            return
        pack_hash = indexer.finish()
        holds.point("receive")  # the pack is a temporary file; nothing points at it yet
        _move_into_packs(store, temp, pack_hash)
    finally:
        if indexer is not None:
            indexer.stop()  # it writes no more: what it wrote can go
        for leftover in glob.glob(glob.escape(temp) + ".*"):  # moved into objects/pack when complete
            os.unlink(leftover)


class IndexPack:
    """`git index-pack --stdin --fix-thin`, writing the pack it is fed to `pack_path` and its
    index beside it; git hashes, completes and indexes it while the rest arrives."""

    def __init__(self, repo_dir: str, pack_path: str) -> None:
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: it can never fill and block git
        self.process = subprocess.Popen(
            ["git", "--git-dir", repo_dir, "index-pack", "--stdin", "--fix-thin", pack_path],
            # The C locale: its error messages are read (a full disk, say).
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env={**os.environ, "LC_ALL": "C"},
            # Not in the daemon's process group: a Ctrl-C on `disco serve` stops the daemon,
            # which lets pushes in flight finish, and must not kill their index-pack.
            start_new_session=True,
        )
        self._pack_path = pack_path
        _widen(cast(IO[bytes], self.process.stdin))

    def feed(self, data: memoryview) -> None:
        stdin = cast(IO[bytes], self.process.stdin)
        try:
            while data:
                data = data[os.write(stdin.fileno(), data):]
        except BrokenPipeError:  # index-pack gave up: its own words say why
            self.process.wait()
            self._raise_error()

    def finish(self) -> str:
        """Wait for git to complete the pack; its name (the pack's checksum, in hex)."""
        cast(IO[bytes], self.process.stdin).close()
        said = cast(IO[bytes], self.process.stdout).read().decode(errors="replace")
        if self.process.wait() != 0:
            self._raise_error()
        kind, _, pack_hash = said.strip().partition("\t")
        if kind != "pack" or len(pack_hash) != 2 * HASH_SIZE:
            raise BrokenPack(f"git index-pack said {said.strip()[:80]!r} instead of the pack's name")
        return pack_hash

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self._stderr):
            if stream is not None:
                with contextlib.suppress(OSError):  # a pipe git left with data unread
                    stream.close()

    def _raise_error(self) -> NoReturn:
        self._stderr.seek(0)
        said = self._stderr.read().decode(errors="replace").strip()
        for errno_, words in INDEX_PACK_FULL_DISK:
            if any(word in said for word in words):
                raise OSError(errno_, f"git index-pack: {said.splitlines()[-1]}", self._pack_path)
        lines = said.splitlines()
        why = next((line for line in lines if line.startswith(("fatal: ", "error: "))), lines[0] if lines else "")
        raise BrokenPack(why.removeprefix("fatal: ").removeprefix("error: ")
                         or f"git index-pack exited with {self.process.returncode}")


def _widen(pipe: IO[bytes]) -> None:
    """Let the pipe into git index-pack hold PIPE_SIZE bytes instead of Linux's 64 KiB: the
    push's thread then checks the next chunk of the pack (PackLimiter) while git indexes the
    last, instead of waiting on git every 64 KiB (bench: a 100 MB push took 1.46x file://'s
    time with 64 KiB, 1.30x with 1 MiB). Where Linux refuses (over the user's pipe quota, or
    not Linux), the pipe keeps its size."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _move_into_packs(store: DiskObjectStore, temp: str, pack_hash: str) -> None:
    """Move the indexed pack into objects/pack under its name, its index last (what makes
    git and dulwich see a pack). On failure whatever was moved goes again: no pack without
    its index. A pack already there (the same objects pushed before) is kept as it is."""
    final = os.path.join(os.fspath(store.pack_dir), f"pack-{pack_hash}")
    moved: list[str] = []
    try:
        for suffix in (".pack", ".rev", ".idx"):
            if os.path.exists(temp + suffix) and not os.path.exists(final + suffix):
                os.rename(temp + suffix, final + suffix)
                moved.append(final + suffix)
    except OSError:
        for path in moved:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        raise


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
            add_limited_thin_pack(store, self._receivable.recv, self.context.limits)
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
        if size <= 0:
            return b""
        # With nothing buffered, as big a read as asked for (the pack's chunks): dulwich's own
        # reads at most 64 KiB, each a hop to the event loop, and copies what it returns.
        buffered = self._rbuf
        position = buffered.tell()
        if buffered.seek(0, os.SEEK_END) == position:
            return self._recv(size)
        buffered.seek(position)
        return super().recv(size)


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
