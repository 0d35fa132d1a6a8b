"""A push is bounded by what it costs the server (inflated sizes), not by what it weighs on the wire."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import threading
import zlib
from pathlib import Path

import pytest
from conftest import make_repo, run, server_ref, shared_disco
from dulwich.object_format import DEFAULT_OBJECT_FORMAT
from dulwich.objects import Blob, Commit, Tree
from dulwich.pack import write_pack_index, write_pack_objects
from dulwich.repo import Repo

from gitserver.gitproto import (
    OBJECT_FLOOR,
    BadClient,
    BrokenPack,
    PackLimiter,
    PushContext,
    PushLimits,
    PushTooLarge,
    delta_target_size,
    run_receive_pack,
)

GiB = 1 << 30
MiB = 1 << 20
DEFAULT = PushLimits(max_input_size=GiB, max_object_size=512 * MiB, max_inflated_size=2 * GiB)


def object_header(type_num: int, size: int) -> bytes:
    out = bytearray([(type_num << 4) | (size & 0x0F)])
    size >>= 4
    while size:
        out[-1] |= 0x80
        out.append(size & 0x7F)
        size >>= 7
    return bytes(out)


def varint(size: int) -> bytes:
    out = bytearray()
    while True:
        out.append(size & 0x7F)
        size >>= 7
        if not size:
            return bytes(out)
        out[-1] |= 0x80


def pack_of(entries: list[bytes]) -> bytes:
    body = b"PACK" + struct.pack(">LL", 2, len(entries)) + b"".join(entries)
    return body + hashlib.sha1(body).digest()


def copy(pack: bytes, limits: PushLimits = DEFAULT) -> PackLimiter:
    limiter = PackLimiter(limits)
    assert limiter.feed(pack) == len(pack) and limiter.done
    return limiter


class Exploding(io.BytesIO):
    """A stream whose zlib part must never be asked for: the header alone must be enough."""

    def __init__(self, data: bytes, header_end: int) -> None:
        super().__init__(data)
        self.header_end = header_end

    def read(self, size: int | None = -1) -> bytes:
        assert self.tell() < self.header_end, "read past the header of an object that should be refused"
        return super().read(size)


def test_a_blob_declared_too_large_is_refused_from_its_header_alone():
    prefix = b"PACK" + struct.pack(">LL", 2, 1) + object_header(3, 2 * GiB)
    stream = Exploding(prefix + zlib.compress(b"never inflated"), len(prefix))
    limiter = PackLimiter(DEFAULT)
    with pytest.raises(PushTooLarge, match=r"^push too large: object of 2 GiB exceeds the 512 MiB limit$"):
        while True:  # a byte at a time: refused with the header's last byte
            limiter.feed(stream.read(1))
    # In one chunk, the chunk is refused whole: nothing of it is handed on.
    with pytest.raises(PushTooLarge, match="object of 2 GiB exceeds"):
        PackLimiter(DEFAULT).feed(prefix + zlib.compress(b"never inflated"))


def test_objects_that_together_inflate_too_much_are_refused():
    limits = PushLimits(max_input_size=GiB, max_object_size=10_000, max_inflated_size=25_000)
    blobs = [object_header(3, 10_000) + zlib.compress(bytes(10_000)) for _ in range(3)]
    copy(pack_of(blobs[:2]), limits)  # 20 000 of 25 000: fine
    with pytest.raises(PushTooLarge, match="its objects inflate to more than the 24.41 KiB limit"):
        copy(pack_of(blobs), limits)


def test_many_tiny_objects_count_for_what_indexing_them_costs():
    # Empty blobs are a few bytes each on the wire and inflate to nothing, but each one costs
    # dulwich's indexing memory: each counts OBJECT_FLOOR.
    limits = PushLimits(max_input_size=GiB, max_object_size=GiB, max_inflated_size=9 * OBJECT_FLOOR)
    empty = object_header(3, 0) + zlib.compress(b"")
    assert copy(pack_of([empty] * 9), limits).inflated_size == 9 * OBJECT_FLOOR
    with pytest.raises(PushTooLarge, match="each counts at least 4 KiB"):
        copy(pack_of([empty] * 10), limits)


def test_a_pack_declaring_more_objects_than_fit_is_refused_from_its_header():
    # 32 bytes claiming four billion objects: git index-pack would try to allocate a table for
    # all of them and answer "Out of memory"; the limit names the problem first.
    limits = PushLimits(max_input_size=GiB, max_object_size=GiB, max_inflated_size=9 * OBJECT_FLOOR)
    with pytest.raises(PushTooLarge, match="its pack declares 10 objects, more than fit the 36 KiB limit"):
        PackLimiter(limits).feed(b"PACK" + struct.pack(">LL", 2, 10))
    with pytest.raises(PushTooLarge, match="declares 4294967295 objects"):
        PackLimiter(DEFAULT).feed(b"PACK" + struct.pack(">LL", 2, 2**32 - 1))


def test_a_small_delta_that_makes_a_huge_object_is_refused():
    base = object_header(3, 10) + zlib.compress(bytes(10))
    # A delta of a few bytes claiming to make 2 GiB out of a 10-byte base (copy ops would follow).
    delta = varint(10) + varint(2 * GiB) + b"\x90\x0a"
    ofs_delta = object_header(6, len(delta)) + varint(len(base))[:1] + zlib.compress(delta)
    with pytest.raises(PushTooLarge, match="object of 2 GiB exceeds the 512 MiB limit"):
        copy(pack_of([base, ofs_delta]))
    ref_delta = object_header(7, len(delta)) + b"\x11" * 20 + zlib.compress(delta)
    with pytest.raises(PushTooLarge, match="object of 2 GiB exceeds"):
        copy(pack_of([ref_delta]))


def test_delta_target_size_reads_the_second_number():
    assert delta_target_size(varint(10) + varint(2 * GiB) + b"rest") == 2 * GiB
    assert delta_target_size(varint(300) + varint(5)) == 5


def test_an_ordinary_pack_within_the_limits_is_copied_unchanged():
    blob = Blob.from_string(b"hello\n" * 1000)
    other = Blob.from_string(b"hello\n" * 1000 + b"and more\n")  # stored as a delta of blob
    tree = Tree()
    tree.add(b"README", 0o100644, blob.id)
    out = io.BytesIO()
    write_pack_objects(out.write, [(blob, None), (other, None), (tree, None)], DEFAULT_OBJECT_FORMAT, deltify=True)
    limiter = copy(out.getvalue())
    assert limiter.objects == 3
    # A delta counts as the object it makes; none counts less than OBJECT_FLOOR.
    assert limiter.inflated_size == sum(max(len(o.as_raw_string()), OBJECT_FLOOR) for o in (blob, other, tree))


def test_a_pack_is_followed_in_chunks_of_any_size_to_its_last_byte():
    blobs = [Blob.from_string(os.urandom(size)) for size in (0, 1, 5000, 300_000)]
    text = Blob.from_string(b"line of text\n" * 20_000)
    out = io.BytesIO()
    write_pack_objects(out.write, [(b, None) for b in [*blobs, text]], DEFAULT_OBJECT_FORMAT)
    pack = out.getvalue()
    whole = copy(pack)
    for chunk in (1, 7, 4096, 65536):
        limiter = PackLimiter(DEFAULT)
        taken = sum(limiter.feed(pack[start:start + chunk]) for start in range(0, len(pack), chunk))
        assert taken == len(pack) and limiter.done
        assert (limiter.objects, limiter.inflated_size) == (whole.objects, whole.inflated_size) == (5, 2 * OBJECT_FLOOR + 5000 + 300_000 + 260_000)
    # What follows the pack is not the pack's.
    limiter = PackLimiter(DEFAULT)
    assert limiter.feed(pack + b"0000") == len(pack) and limiter.done


def test_an_object_that_inflates_to_more_than_its_header_says_is_refused():
    # zlib makes 100 MB of zeros out of 100 KB: a header that says 10 bytes must stop it at 11.
    lying = object_header(3, 10) + zlib.compress(bytes(100_000_000))
    with pytest.raises(BrokenPack, match=r"pack object 1 \(at byte 12\): it inflates to more than the 10 bytes"):
        copy(pack_of([lying]))
    short = object_header(3, 10) + zlib.compress(bytes(9))
    with pytest.raises(BrokenPack, match="it inflates to 9 bytes, its header says 10"):
        copy(pack_of([short]))


@pytest.mark.parametrize("stream, message", [
    (b"PAC" + bytes(9), "does not start with a pack header"),
    (b"PACK" + struct.pack(">LL", 4, 1), "pack version 4 is not supported"),
    (b"PACK" + struct.pack(">LL", 2, 1) + bytes([0x50]), r"pack object 1 \(at byte 12\): unknown type 5"),
    (b"PACK" + struct.pack(">LL", 2, 1) + b"\xb0" + b"\xff" * 10, "its header does not end"),
    (b"PACK" + struct.pack(">LL", 2, 1) + object_header(3, 5) + b"not zlib", "incorrect header check"),
])
def test_a_broken_pack_says_where_and_how(stream: bytes, message: str):
    with pytest.raises(BrokenPack, match=message):
        PackLimiter(DEFAULT).feed(stream)


def test_the_wire_limit_still_applies():
    from dulwich.object_store import PackInputTooLarge

    blob = object_header(3, 4096) + zlib.compress(bytes(4096))
    with pytest.raises(PackInputTooLarge):
        copy(pack_of([blob]), PushLimits(max_input_size=20, max_object_size=GiB, max_inflated_size=GiB))


class BytesChannel:
    """ChannelIO's two calls over bytes in memory: what the client sends, then its end."""

    def __init__(self, incoming: bytes) -> None:
        self.recv = io.BytesIO(incoming).read
        self.write = io.BytesIO().write


@pytest.mark.parametrize("stream, message", [
    (b"", "the client hung up"),
    (b"00", "git protocol error"),
    (b"0010" + b"x" * 4, "git protocol error"),  # shorter than its length says
    # Two NULs: dulwich's capability parser raised a ValueError (found by tests/test_fuzz.py).
    (b"0035" + b"0" * 40 + b" a\0b\0c" + b"0000", "more than one NUL"),
])
def test_a_client_breaking_the_protocol_gets_a_bad_client_error(tmp_path: Path, stream: bytes, message: str):
    # Not dulwich's own errors, which asyncssh answered by dropping the connection without a word.
    repo = Repo.init_bare(str(tmp_path / "r.git"), mkdir=True)
    context = PushContext(None, "shop", "alice", DEFAULT, threading.Lock())  # type: ignore[arg-type]
    with pytest.raises(BadClient, match=message):
        run_receive_pack(repo, BytesChannel(stream), context)  # type: ignore[arg-type]


def test_an_empty_pkt_line_ends_the_ref_list(tmp_path: Path):
    # "0004" made dulwich's reader fail an assert (found by tests/test_fuzz.py); git allows it.
    repo = Repo.init_bare(str(tmp_path / "r.git"), mkdir=True)
    context = PushContext(None, "shop", "alice", DEFAULT, threading.Lock())  # type: ignore[arg-type]
    run_receive_pack(repo, BytesChannel(b"0004"), context)  # type: ignore[arg-type]
    assert context.updated == context.refused == [] and repo.get_refs() == {}


# --- a real git push of a 2 GiB file of zeros: a 2 MB pack that would inflate to 2 GiB ---


def zeros_stream(size: int, chunk: int = 16 * MiB) -> bytes:
    """zlib data of `size` zero bytes, made from one compressed chunk (compressing 2 GiB takes ~10 s).

    After a full flush deflate starts afresh, so each further chunk compresses to the same bytes.
    """
    assert size % chunk == 0
    zeros = bytes(chunk)
    c = zlib.compressobj(9)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH) == again
    end = c.flush(zlib.Z_FINISH)[:-4]  # the final block, without the checksum of three chunks
    adler = ((size % 65521) << 16) | 1  # adler32 of zeros: a stays 1, b grows by 1 a byte
    return first + again * (size // chunk - 1) + end + struct.pack(">L", adler)


def blob_id_of_zeros(size: int) -> bytes:
    digest = hashlib.sha1(b"blob %d\0" % size)
    zeros = bytes(16 * MiB)
    for _ in range(size // len(zeros)):
        digest.update(zeros)
    return digest.digest()


def bomb_repo(path: Path, size: int = 2 * GiB) -> str:
    """A repo whose branch `dev` holds zeros.bin, `size` zero bytes, as `truncate -s 2G` makes.

    `git add` of 2 GiB takes ~30 s here, so its pack (and index) are written directly: git then
    pushes the blob as it is stored, without inflating it.
    """
    make_repo(path, branch="dev")
    blob_id = blob_id_of_zeros(size)
    tree = Tree()
    tree.add(b"zeros.bin", 0o100644, blob_id.hex().encode())
    parent = run(["git", "rev-parse", "HEAD"], cwd=path, check=True).stdout.strip()
    commit = Commit()
    commit.tree, commit.parents, commit.message = tree.id, [parent.encode()], b"2 GiB of zeros\n"
    commit.author = commit.committer = b"Test <test@example.com>"
    commit.author_time = commit.commit_time = 1700000000
    commit.author_timezone = commit.commit_timezone = 0
    entries = [object_header(3, size) + zeros_stream(size)]
    for obj in (tree, commit):
        entries.append(object_header(obj.type_num, len(obj.as_raw_string())) + zlib.compress(obj.as_raw_string()))
    pack = pack_of(entries)
    index, offset = [], 12
    for raw_id, entry in zip([blob_id, bytes.fromhex(tree.id.decode()), bytes.fromhex(commit.id.decode())],
                             entries, strict=True):
        index.append((raw_id, offset, zlib.crc32(entry)))
        offset += len(entry)
    name = path / ".git" / "objects" / "pack" / f"pack-{pack[-20:].hex()}"
    name.with_suffix(".pack").write_bytes(pack)
    with name.with_suffix(".idx").open("wb") as f:
        write_pack_index(f, sorted(index), pack[-20:], version=2)
    run(["git", "update-ref", "refs/heads/dev", commit.id.decode()], cwd=path, check=True)
    return commit.id.decode()


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from shared_disco(tmp_path_factory.mktemp("limits"))


def test_a_push_that_would_inflate_to_2_gib_is_refused_without_the_memory(shared, tmp_path: Path):
    disco, key = shared
    repo = tmp_path / "bomb"
    bomb_repo(repo)
    # The client side is sound (a full fsck would inflate the 2 GiB: 12 s).
    assert run(["git", "cat-file", "-s", "dev:zeros.bin"], cwd=repo, check=True).stdout.strip() == str(2 * GiB)
    first = run(["git", "rev-parse", "HEAD~1"], cwd=repo, check=True).stdout.strip()
    assert disco.git(key, "push", disco.url("bomb"), f"{first}:refs/heads/dev", cwd=repo).returncode == 0
    packs = sorted((disco.repo_dir("bomb") / "objects" / "pack").iterdir())

    result = disco.git(key, "push", disco.url("bomb"), "dev", cwd=repo)
    assert disco.process is not None
    rss = peak_rss(disco.process.pid)
    print(f"daemon peak RSS after the 2 GiB push: {rss / MiB:.0f} MiB")
    assert result.returncode != 0
    assert "! [remote rejected] dev -> dev (push too large: object of 2 GiB exceeds the 512 MiB limit)" in result.stderr
    assert rss < 300 * MiB, f"the daemon peaked at {rss / MiB:.0f} MiB"

    assert server_ref(disco, "bomb", "refs/heads/dev") == first
    objects = disco.repo_dir("bomb") / "objects"
    assert sorted((objects / "pack").iterdir()) == packs
    assert list(objects.glob("tmp_pack_*")) == []
    fsck = run(["git", "--git-dir", str(disco.repo_dir("bomb")), "fsck", "--strict"])
    assert fsck.returncode == 0, fsck.stderr
