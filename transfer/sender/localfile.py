"""The sender's look at its own copy of a file: its size and xxh3-128, and its chunks.

Invariants:
- A file is uploaded only while its bytes still hash to the journaled digest. Every
  delivery attempt reads the file through `open_checked`, which compares size and
  digest with the journal before it returns, so before any request of the attempt
  (`LocalFileDamaged` otherwise: a spool file damaged or changed after it was journaled
  is never sent as truth); the first attempt of a file this process has just hashed for
  the journal may use that pass instead ("One pass" below).
  - A file sent in one request (size <= chunk) is read, hashed and compared in one pass,
    in one thread, and the bytes compared are the very bytes sent (a retry re-sends the
    same object): nothing can change between the check and the send.
  - A larger file is hashed whole through the descriptor that then serves its chunks, so
    a file renamed over the path after the check is not the one sent; the same pass
    takes the xxh3-128 of every chunk. Each chunk is a `Region` of that descriptor,
    sent from the file (`http.RegionPayload`) with the digest of its checked bytes
    (Content-Digest), so the server keeps only bytes that were checked: bytes changed
    in place after the check are refused. The one exception is a chunk that starts off
    the chunk grid (the server acknowledged part of a chunk): it is hashed as it is read
    just before its request. Either way the whole file is checked against the
    journaled Repr-Digest before it is published.
  - A chunk asked for again in the same attempt (a retry, a resync) is read and
    compared with its checked digest first: a file changed or cut short since the
    check fails as `LocalFileDamaged` instead of being refused again and again.
- Memory does not grow with the chunk size: a larger file's chunks are never held in
  memory (sendfile), only their digests (16 bytes a chunk); a chunk read again, or one
  that starts off the chunk grid (after a short acknowledgement), is hashed through one
  reused buffer of `HASH_BLOCK` bytes, since the uploader reads one chunk at a time
  (it awaits each `read`).
- Disk reads run in threads, off the event loop: one thread hop per attempt, for the
  check (and whole read) of the file, plus one per chunk read again.

One pass for a file this process journals and then sends (`hash_for_journal`): the
pass that takes the size and digest for the journal also takes the digest of every
chunk at the chunk size the uploader will use, and the identity of the file it read
(`Identity`: device, inode, size, mtime and ctime, the same before and after the
pass). The first attempt then opens the path and, if the descriptor's identity is
still that one, sends the chunks with those digests instead of hashing the file again
(`Hashed`); a 1 GiB file is read once before its first byte instead of twice. The
guarantee above still holds, because it never rested on the moment of the check: the
bytes that go out are read from the file again (sendfile) in any case, so
- every chunk carries, as Content-Digest, the xxh3-128 of the bytes that were hashed
  for the journal, and the server verifies it and refuses changed bytes
  (`chunk_digest_mismatch`, nothing kept);
- the whole file's Repr-Digest (the journaled one, announced at creation) is verified
  by the server before it publishes;
- a refused or retried chunk is read again and compared with its hashed digest, so a
  file changed meanwhile fails as `LocalFileDamaged` (reported damaged) instead of
  being refused again and again.
The identity is an early warning, not the guarantee: a change it shows gets the full
check (damaged before any request); a change it misses (bytes written in place through
a mapping that was already dirty, so no time moved) is refused by the server, chunk by
chunk. The pass stands in only where the server checks each chunk's xxh3-128
(`Client.checks_chunks`: the native protocol), only for the first attempt of
a file journaled by this very process, and only at the chunk size it was taken at; a
file resumed after a restart, any later attempt, and a file sent in one request (whose
sent bytes are the checked ones) keep the full check.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import mmap
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import xxhash

from transfer.common.http import Region
from transfer.core import integrity
from transfer.core.errors import LocalFileDamaged
from transfer.sender.journal import JournalEntry

HASH_BLOCK = 1024 * 1024  # bytes read per call when hashing a file or a chunk


def auto_chunk_size(size: int) -> int:
    """The whole file in one request up to 8 MiB, 8 MiB chunks beyond (a multiple of
    256 KiB either way). Measured in docs/benchmarks.md: 256 KiB chunks cost a request and
    an fsync each (45 MB/s on a 1 GiB file), 8 MiB ones reach the server's speed, larger
    ones gain nothing and resend more after a kill; small files want one round trip."""
    quantum = 256 * 1024
    return min(max(-(-size // quantum) * quantum, quantum), 32 * quantum)


Identity = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


@dataclass(frozen=True, slots=True)
class Hashed:
    """What the journaling pass read (`hash_for_journal`): the file's size and hex
    xxh3-128, and, for a file the uploader sends in chunks of `chunk` bytes, each chunk's
    xxh3-128 and the `identity` of the file read (None: it changed during the pass)."""

    size: int
    digest: str
    chunk: int | None = None
    digests: bytes = b""  # 16 bytes a chunk, in order
    identity: Identity | None = None

    @property
    def reusable(self) -> bool:
        """Worth keeping for the first attempt: chunk digests of a file that held still."""
        return self.chunk is not None and self.identity is not None


def identity(stat: os.stat_result) -> Identity:
    """The file and its version, as the inode tells them: ctime as well as mtime, since
    `utime` can set mtime back but moves ctime."""
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@contextlib.asynccontextmanager
async def open_checked(
    entry: JournalEntry, chunk: int, hashed: Hashed | None = None
) -> AsyncIterator[LocalFile]:
    """`entry`'s file, checked against the journal, read in chunks of `chunk` bytes.
    `hashed`: what this process read when it journaled the file; its chunk digests
    stand in for the check if the file is still the one read (module docstring).

    Raises:
        LocalFileDamaged: the file is gone, unreadable, or not the journaled bytes.
    """
    source = await _checked(entry, chunk, hashed)
    try:
        yield LocalFile(entry, chunk, source)
    finally:
        if isinstance(source, Checked):
            source.file.close()


@dataclass(frozen=True, slots=True)
class Checked:
    """A larger file, open, checked against the journal, and its chunks' digests."""

    file: io.FileIO
    digests: bytes  # the xxh3-128 of each chunk, in order, 16 bytes each

    def digest(self, offset: int, chunk: int) -> bytes | None:
        """The checked digest of the chunk at `offset`; None off the chunk grid."""
        index, rest = divmod(offset, chunk)
        return None if rest else self.digests[16 * index : 16 * index + 16] or None


async def _checked(entry: JournalEntry, chunk: int, hashed: Hashed | None) -> bytes | Checked:
    """The whole checked file (sent in one request), or the checked file, open."""
    try:
        if entry.size <= chunk:
            return await asyncio.to_thread(_read_whole, entry)
        fd, digests = await asyncio.to_thread(_open_hashed, entry, chunk, hashed)
        return Checked(io.FileIO(fd, "rb"), digests)
    except OSError as exc:
        raise LocalFileDamaged(f"{entry.path}: {exc.strerror}") from exc


class LocalFile:
    """One delivery attempt's checked file: its chunks by offset (see the invariants)."""

    def __init__(self, entry: JournalEntry, chunk: int, source: bytes | Checked) -> None:
        self.entry, self.chunk = entry, chunk
        self._source = source  # the checked bytes, or the checked file
        self._buffer: mmap.mmap | None = None  # for chunks read again, made on first use
        self._next = 0  # the end of the furthest chunk handed out; below it, a chunk is read again

    async def read(self, offset: int) -> memoryview | Region:
        """Up to `chunk` bytes from `offset`: a view of the checked bytes (a file sent
        whole), or a `Region` of the checked file with its digest.

        Raises:
            LocalFileDamaged: the chunk was asked for before and its bytes are no longer
                the checked ones, or the file ends before the chunk does.
        """
        source = self._source
        if isinstance(source, bytes):
            if not (data := memoryview(source)[offset : offset + self.chunk]):
                raise self._short()
            return data
        count = min(self.chunk, self.entry.size - offset)
        if count <= 0:
            raise self._short()
        digest = source.digest(offset, self.chunk)
        if digest is None or offset < self._next:
            digest = await self._reread(source, offset, count, digest)
        self._next = max(self._next, offset + count)
        return Region(source.file, offset, count, {integrity.PREFERRED: digest})

    async def _reread(
        self, source: Checked, offset: int, count: int, checked: bytes | None
    ) -> bytes:
        """The digest of the chunk as it is on disk now, which must be `checked` if known."""
        self._buffer = self._buffer or _buffer(HASH_BLOCK)
        try:
            digest = await asyncio.to_thread(
                _digest_region, source.file, self._buffer, offset, count
            )
        except OSError as exc:
            raise LocalFileDamaged(f"{self.entry.path}: {exc.strerror}") from exc
        if digest is None:
            raise self._short()
        if checked is not None and digest != checked:
            raise LocalFileDamaged(
                f"{self.entry.path} changed on disk since it was journaled (at offset {offset})"
            )
        return digest

    def _short(self) -> LocalFileDamaged:
        return LocalFileDamaged(
            f"{self.entry.path} is shorter than its journaled {self.entry.size}"
        )


def hash_file(path: Path) -> tuple[int, str]:
    """A file's size and hex xxh3-128, read from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _hash_fd(fd, _buffer(HASH_BLOCK))
    finally:
        os.close(fd)


def hash_for_journal(path: Path, chunk_for: Callable[[int], int | None]) -> Hashed:
    """A file's size and hex xxh3-128 and, in the same pass, the digests of its chunks of
    `chunk_for(size)` bytes (None: none wanted) with its identity (run in a thread)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        before = identity(os.fstat(fd))
        if (chunk := chunk_for(before[2])) is None:
            return Hashed(*_hash_fd(fd, _buffer(HASH_BLOCK)))
        size, digest, digests = _hash_chunked(fd, chunk)
        held = size == before[2] and identity(os.fstat(fd)) == before
        return Hashed(size, digest, chunk, digests, before if held else None)
    finally:
        os.close(fd)


def _read_whole(entry: JournalEntry) -> bytes:
    """The file's bytes, once they are checked against the journal (run in a thread).
    One byte more than journaled is asked for, so a file that grew is seen."""
    fd = os.open(entry.path, os.O_RDONLY)
    try:
        data = _pread_all(fd, entry.size + 1)
    finally:
        os.close(fd)
    _compare(entry, len(data), xxhash.xxh3_128_hexdigest(data))
    return data


def _open_hashed(entry: JournalEntry, chunk: int, hashed: Hashed | None) -> tuple[int, bytes]:
    """An open descriptor of the file, once it is hashed and compared, and the digests of
    its chunks, taken in the same pass (run in a thread); or, if the descriptor is of
    the file `hashed` read when it was journaled, that pass's digests."""
    fd = os.open(entry.path, os.O_RDONLY)
    try:
        if (known := _journaled(entry, chunk, hashed, fd)) is not None:
            return fd, known
        size, digest, digests = _hash_chunked(fd, chunk)
        _compare(entry, size, digest)
    except BaseException:
        os.close(fd)
        raise
    return fd, digests


def _journaled(entry: JournalEntry, chunk: int, hashed: Hashed | None, fd: int) -> bytes | None:
    """`hashed`'s chunk digests if they are of `entry` as journaled, at this chunk size,
    and `fd` is still the file they were taken from; else None (hash it again)."""
    if hashed is None or hashed.identity is None or hashed.chunk != chunk:
        return None
    if (hashed.size, hashed.digest) != (entry.size, entry.digest):
        return None
    return hashed.digests if identity(os.fstat(fd)) == hashed.identity else None


def _hash_chunked(fd: int, chunk: int) -> tuple[int, str, bytes]:
    """One pass over the file: its size, its hex xxh3-128 and the xxh3-128 of each
    `chunk` bytes (16 bytes a chunk, in order)."""
    whole, chunks = xxhash.xxh3_128(), _ChunkDigests(chunk)

    def both(view: memoryview) -> None:
        whole.update(view)
        chunks.update(view)

    size = _feed(fd, _buffer(HASH_BLOCK), 0, None, both)
    return size, whole.hexdigest(), chunks.finish()


class _ChunkDigests:
    """The xxh3-128 of each `chunk` bytes of a stream fed in blocks of any size."""

    def __init__(self, chunk: int) -> None:
        self._chunk, self._filled = chunk, 0
        self._hasher = xxhash.xxh3_128()
        self._digests = bytearray()

    def update(self, data: memoryview) -> None:
        while data:
            take = min(len(data), self._chunk - self._filled)
            self._hasher.update(data[:take])
            self._filled, data = self._filled + take, data[take:]
            if self._filled == self._chunk:
                self._close()

    def finish(self) -> bytes:
        if self._filled:
            self._close()
        return bytes(self._digests)

    def _close(self) -> None:
        self._digests += self._hasher.digest()
        self._hasher, self._filled = xxhash.xxh3_128(), 0


def _compare(entry: JournalEntry, size: int, digest: str) -> None:
    if size != entry.size or digest != entry.digest:
        raise LocalFileDamaged(
            f"{entry.path} changed on disk since it was journaled (size {size}, digest {digest})"
        )


def _buffer(size: int) -> mmap.mmap:
    """A page-aligned read buffer (anonymous memory, returned to the system when freed).
    Not a bytearray: malloc puts a bytearray's bytes 16 bytes past a page boundary, and
    the kernel copies into a page-aligned buffer about twice as fast (measured on this
    project's AMD EPYC VM: 0.09-0.15 vs 0.18-0.30 s per GiB)."""
    return mmap.mmap(-1, size)


def _hash_fd(fd: int, buffer: mmap.mmap) -> tuple[int, str]:
    hasher = xxhash.xxh3_128()
    size = _feed(fd, buffer, 0, None, hasher.update)
    return size, hasher.hexdigest()


def _digest_region(file: io.FileIO, buffer: mmap.mmap, offset: int, count: int) -> bytes | None:
    """The xxh3-128 of `count` bytes from `offset`; None if the file ends before them."""
    hasher = xxhash.xxh3_128()
    size = _feed(file.fileno(), buffer, offset, count, hasher.update)
    return hasher.digest() if size == count else None


def _feed(
    fd: int, buffer: mmap.mmap, offset: int, count: int | None, update: Callable[[memoryview], None]
) -> int:
    """Feed `count` bytes from `offset` (None: to the end) to `update` through `buffer`;
    returns the number read (fewer only at the end of the file)."""
    view, size = memoryview(buffer), 0
    while count is None or size < count:
        want = view if count is None else view[: min(len(view), count - size)]
        if not (got := os.preadv(fd, [want], offset + size)):
            break
        update(view[:got])
        size += got
    return size


def _pread_all(fd: int, limit: int) -> bytes:
    """Up to `limit` bytes from the start: one read, unless the system returns fewer."""
    data = os.pread(fd, limit, 0)
    while len(data) < limit and (more := os.pread(fd, limit - len(data), len(data))):
        data += more
    return data
