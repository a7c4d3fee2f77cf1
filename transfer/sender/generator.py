"""Seeded, reproducible generator of binary files of int16 samples.

The brief asks for 100 files of random size "1kb to 1Mb" at random intervals of 1 ms to
1 s. We read the sizes as 1 KiB (1024 bytes) to 1 MiB (1048576 bytes), as `units` does.

Invariants:
- Reproducible per `(seed, index)`: `spec_for` and `content_for` are pure functions of
  their arguments, each seeding its own `random.Random` from a string such as
  `"seed:index"` (string seeds hash with SHA-512, so no `PYTHONHASHSEED` dependence).
  File i is therefore the same whatever was generated before it, and a restarted
  sender regenerates it identically with `generate(..., start=i)`.
- Sizes are even (whole int16 samples) and lie in `[min_size, max_size]` once `min_size`
  is rounded up and `max_size` down to even; a config with no even size in range is a
  `ConfigError`. Intervals lie in `[min_interval, max_interval]`.
- Encoding: raw little-endian signed 16-bit samples, no header. Every even-length byte
  string is a valid sample sequence, so uniformly random bytes are uniform samples.
- `generate` waits `spec.interval` before each file (measured from when the consumer
  asks for it) and never yields a file once `max_duration` has elapsed since it started.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from transfer.core.errors import ConfigError

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


def content_for(seed: int, index: int, size: int) -> bytes:
    """`size` bytes of random little-endian int16 samples for file `index`.

    Raises:
        ValueError: `size` is negative or odd (not whole samples).
    """
    if size < 0 or size % 2:
        raise ValueError(f"size must be a non-negative even number of bytes, not {size}")
    # A separate stream from spec_for's, so sizes and samples are not correlated.
    return random.Random(f"{seed}:{index}:content").randbytes(size)


async def generate(
    config: GeneratorConfig,
    seed: int,
    *,
    start: int = 0,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
) -> AsyncIterator[tuple[FileSpec, bytes]]:
    """Yield files `start..count-1`, sleeping each one's interval before it.

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
        yield spec, content_for(seed, index, spec.size)
