"""Seeded, reproducible generator of binary files of int16 samples.

The brief asks for 100 files of random size "1kb to 1Mb" at random intervals of 1 ms to
1 s. We read the sizes as 1 KiB (1024 bytes) to 1 MiB (1048576 bytes), as `units` does.

Invariants:
- Reproducible per `(seed, index)`: `spec_for` and `content_for` are pure functions of
  their arguments, each seeding its own generator from a string such as `"seed:index"`
  (`random.Random` hashes string seeds with SHA-512, so no `PYTHONHASHSEED` dependence).
  File i is therefore the same whatever was generated before it, and a restarted
  sender regenerates it identically with `generate(..., start=i)`.
- Sizes are even (whole int16 samples) and lie in `[min_size, max_size]` once `min_size`
  is rounded up and `max_size` down to even; a config with no even size in range is a
  `ConfigError`. Intervals lie in `[min_interval, max_interval]`.
- Encoding: raw little-endian signed 16-bit samples, no header. Every even-length byte
  string is a valid sample sequence, so uniformly random bytes are uniform samples.
- Versions (`GENERATOR_VERSION`; a spool's journal records its own under the meta key
  `generator`, and a journal without it is version 1): the bytes of a version never
  change, so a spool regenerates what it journaled whichever version is current.
  Version 1 is `random.Random(f"{seed}:{index}:content").randbytes(size)` (MT19937 plus
  two int<->bytes conversions, 3.6 ms of CPU per MiB). Version 2 is SHAKE128, an
  extendable-output function, in blocks of `BLOCK` bytes: block k is the first bytes of
  `shake_128(f"{seed}:{index}:content:{k}")` (1.8 ms per MiB; docs/benchmarks.md).
  Version 3 is the AES-128-CTR keystream (0.15 ms per MiB with AES-NI, through the
  `cryptography` package): byte j of the file is byte `j % 16` of
  `AES-128(key, (j // 16).to_bytes(16, "big"))`, the key being
  `shake_128(f"{seed}:{index}:content:v3".encode("ascii")).digest(16)`; that is, CTR
  mode encrypting zeros, its counter block starting at 0 and counting big-endian over
  all 16 bytes. So the bytes from any 16-byte-aligned offset o can be made alone, from
  counter block `o // 16`. In versions 2 and 3 a file is a prefix of the same index's
  larger files (in version 1 only when its size is whole 32-bit words).
- Any size is generated in pieces of `piece` bytes (`PIECE` by default), so memory stays
  bounded (a 256 MiB file needs 4 MiB at a time; one `randbytes` call cannot even make
  it: it counts bits in a C int). The pieces concatenate to the same bytes whatever the
  piece size: version 1's `getrandbits` fills whole 32-bit words in order, least
  significant first, and a piece is a multiple of 4 bytes, so cutting the stream at
  piece boundaries never splits a word; version 2's blocks do not depend on the pieces;
  version 3's pieces come from one CTR stream, which carries the counter and the unused
  part of a keystream block from one piece to the next (a piece need not be 16-byte
  aligned). tests/test_generator.py pins the digests of every version.
- `cryptography` (OpenSSL's AES) is imported when a version 3 file's first piece is
  made, in the writing thread: `transfer --help`, `transfer serve` and version 1 and 2
  spools never load it (19 ms).
- `generate` waits `spec.interval` before each file (measured from when the consumer
  asks for it) and never yields a file once `max_duration` has elapsed since it started.
- `write_file` leaves either nothing or the whole, fsynced file at its path (a `.tmp`
  name until complete); cancelling it stops the writing thread within one piece, before
  the rename.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import xxhash

from transfer.common.fsutil import TMP_SUFFIX, fsync_dir, write_all
from transfer.core.errors import ConfigError

PIECE = 4 * 1024 * 1024  # bytes generated and written at a time; a multiple of 4
BLOCK = 1024 * 1024  # version 2: bytes per SHAKE128 output (PIECE is a multiple of it)
VERSIONS = (1, 2, 3)  # every generator version whose bytes this sender can make
GENERATOR_VERSION = 3  # what a new spool gets (see the module's invariants)
META_KEY = "generator"  # the journal meta setting that names a spool's version
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    count: int = 100
    min_size: int = 1024
    max_size: int = 1024 * 1024
    min_interval: float = 0.001  # seconds
    max_interval: float = 1.0
    max_duration: float | None = None  # stop generating once this long has passed

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ConfigError(f"file count must be >= 0, not {self.count}")
        if not 2 <= self.min_size <= self.max_size:
            raise ConfigError(
                f"sizes must satisfy 2 <= min <= max, not {self.min_size}..{self.max_size}"
            )
        _even_sizes(self)
        # `not (a <= b)` rather than `a > b` so that NaN is rejected too.
        if not 0 <= self.min_interval <= self.max_interval < math.inf:
            raise ConfigError(
                "intervals must satisfy 0 <= min <= max (finite), "
                f"not {self.min_interval}..{self.max_interval}"
            )
        if self.max_duration is not None and not self.max_duration >= 0:
            raise ConfigError(f"max duration must be >= 0, not {self.max_duration}")


@dataclass(frozen=True, slots=True)
class FileSpec:
    index: int  # 0-based
    size: int  # bytes, even: whole int16 samples
    interval: float  # seconds to wait before this file is generated


def _even_sizes(config: GeneratorConfig) -> tuple[int, int]:
    """Smallest and largest even size allowed; ConfigError if there is none."""
    low = config.min_size + config.min_size % 2
    high = config.max_size - config.max_size % 2
    if low > high:
        raise ConfigError(f"no even size in {config.min_size}..{config.max_size} bytes")
    return low, high


def spec_for(config: GeneratorConfig, seed: int, index: int) -> FileSpec:
    """The size and preceding interval of file `index`; pure in its arguments."""
    low, high = _even_sizes(config)  # cannot fail: __post_init__ checked it
    rng = random.Random(f"{seed}:{index}")
    size = 2 * rng.randint(low // 2, high // 2)
    interval = rng.uniform(config.min_interval, config.max_interval)
    # `uniform` may round a hair past its end point; clamp so the bound is exact.
    interval = min(max(interval, config.min_interval), config.max_interval)
    return FileSpec(index=index, size=size, interval=interval)


def content_for(seed: int, index: int, size: int, version: int = GENERATOR_VERSION) -> bytes:
    """`size` bytes of random little-endian int16 samples for file `index`, at once.

    Raises:
        ValueError: `size` is negative or odd (not whole samples), or `version` unknown.
    """
    return b"".join(content_pieces(seed, index, size, version=version))


def content_pieces(
    seed: int, index: int, size: int, piece: int = PIECE, *, version: int = GENERATOR_VERSION
) -> Iterator[bytes]:
    """The bytes of `content_for(seed, index, size, version)`, `piece` bytes at a time
    (the last piece shorter). `piece` must be a positive multiple of 4 (see the module's
    invariants).

    Raises:
        ValueError: `size` is negative or odd, `piece` is no positive multiple of 4, or
            `version` is not one of `VERSIONS`.
    """
    if size < 0 or size % 2:
        raise ValueError(f"size must be a non-negative even number of bytes, not {size}")
    if piece <= 0 or piece % 4:
        raise ValueError(f"piece must be a positive multiple of 4 bytes, not {piece}")
    if version == 1:
        return _mt_pieces(seed, index, size, piece)
    if version == 2:
        return _cut(_shake_blocks(seed, index, size), piece)
    if version == 3:
        return _aes_pieces(seed, index, size, piece)
    raise ValueError(f"unknown generator version {version}; this sender knows {VERSIONS}")


def version_of(meta: Mapping[str, str]) -> int:
    """The generator version a spool's journal meta names (none: 1, the first).

    Raises:
        ConfigError: a version this sender does not know (a newer sender's spool).
    """
    value = meta.get(META_KEY, "1")
    if value not in {str(v) for v in VERSIONS}:
        raise ConfigError(
            f"this spool was generated by generator version {value}; this sender knows {VERSIONS}"
        )
    return int(value)


def _mt_pieces(seed: int, index: int, size: int, piece: int) -> Iterator[bytes]:
    # A separate stream from spec_for's, so sizes and samples are not correlated.
    rng = random.Random(f"{seed}:{index}:content")
    for start in range(0, size, piece):
        yield rng.randbytes(min(piece, size - start))


def _shake_blocks(seed: int, index: int, size: int) -> Iterator[bytes]:
    for number, start in enumerate(range(0, size, BLOCK)):
        xof = hashlib.shake_128(f"{seed}:{index}:content:{number}".encode("ascii"))
        yield xof.digest(min(BLOCK, size - start))


def _aes_pieces(seed: int, index: int, size: int, piece: int) -> Iterator[bytes]:
    # Lazy (19 ms): only version 3 pays for it (see the module's docstring).
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: PLC0415

    key = hashlib.shake_128(f"{seed}:{index}:content:v3".encode("ascii")).digest(16)
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    for start in range(0, size, piece):
        yield stream.update(bytes(min(piece, size - start)))  # keystream XOR zeros


def _cut(blocks: Iterator[bytes], piece: int) -> Iterator[bytes]:
    """`blocks` re-cut into pieces of `piece` bytes. A piece of whole blocks is their
    join (a file of one block is that block itself, uncopied)."""
    if piece % BLOCK == 0:
        while group := list(itertools.islice(blocks, piece // BLOCK)):
            yield b"".join(group)
        return
    buffer = bytearray()
    for block in blocks:
        buffer += block
        while len(buffer) >= piece:
            yield bytes(buffer[:piece])
            del buffer[:piece]
    if buffer:
        yield bytes(buffer)


async def write_file(
    path: Path, seed: int, index: int, size: int, version: int = GENERATOR_VERSION
) -> str:
    """Write file `index` of `seed` (`size` bytes) to `path` durably, in pieces, and
    return its hex xxh3-128: temporary name, fsync, rename, fsync of the directory, all
    in one thread (one hop of the event loop per file).

    Cancelling it leaves at most the `.tmp` file (swept on the next start) and stops the
    writing thread after the piece in hand: the thread owns its descriptor and closes it.
    A cancellation that arrives once the rename has begun leaves the whole file, which
    the next start regenerates byte-identically if it was not journaled.

    Raises:
        OSError: the spool cannot be written (full disk, permissions).
        ValueError: as `content_pieces`.
    """
    hasher = xxhash.xxh3_128()
    cancelled = threading.Event()
    pieces = content_pieces(seed, index, size, version=version)
    try:
        # The executor's future itself, not `to_thread` (a task and a context copy more,
        # ~10 us a file; the thread logs nothing).
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _write_and_publish, path, pieces, hasher.update, cancelled)
    except asyncio.CancelledError:
        cancelled.set()  # the thread stops at its next piece
        raise
    return hasher.hexdigest()


def _write_and_publish(
    path: Path, pieces: Iterator[bytes], update: Callable[[bytes], None], stop: threading.Event
) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for data in pieces:
            if stop.is_set():
                return
            write_all(fd, data)
            update(data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if not stop.is_set():
        os.replace(tmp, path)
        fsync_dir(path.parent)


async def generate(
    config: GeneratorConfig,
    seed: int,
    *,
    start: int = 0,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
) -> AsyncIterator[FileSpec]:
    """Yield the specs of files `start..count-1`, sleeping each one's interval before
    it; the caller makes the bytes (`content_pieces`, `write_file`), so a large file
    never has to sit in memory whole.

    The deadline (`max_duration`) counts from the first iteration and includes the time
    the consumer spends between files. A wait that would end at or past the deadline is
    skipped and generation stops at once, rather than sleeping only to stop.

    Raises:
        ValueError: `start` is outside `0..count`.
    """
    if not 0 <= start <= config.count:
        raise ValueError(f"start must be in 0..{config.count}, not {start}")
    deadline = math.inf if config.max_duration is None else clock() + config.max_duration
    for index in range(start, config.count):
        spec = spec_for(config, seed, index)
        if clock() + spec.interval >= deadline:
            return
        await sleep(spec.interval)
        if clock() >= deadline:  # a real sleep may overshoot
            return
        yield spec
