"""A seeded TCP fault-injection proxy that tests and chaos runs put between client and server.

`FaultProxy` listens on 127.0.0.1 and forwards each accepted connection to one target.
A plan maps the 0-based connection number to the `Fault` that connection suffers;
`random_plan` builds a reproducible plan from a seed. What each fault models:

- `cut_after=N`: a peer or middlebox that closes cleanly mid-request. After N
  client->server bytes both sides get a FIN (then the sockets are closed).
- `reset_after=N`: a crashed host or a firewall. After N client->server bytes both
  sockets are aborted with an RST (SO_LINGER 0); bytes still buffered are dropped.
- `stall_after=N`: a black hole. After N bytes nothing more goes upstream while the
  connection stays open, so the client must time out; the stall ends, closing the
  connection, when the proxy closes or `set_plan` is called.
- `latency`: seconds added before forwarding each read, in both directions.
- `bandwidth`: a bytes-per-second cap per direction per connection.

Invariants: bytes are forwarded in order and unmodified; a fault only ever truncates or
delays a stream, never corrupts, reorders or invents bytes. Offsets count client->server
bytes forwarded on one connection. A fault fires as soon as its offset is reached (0 fires
on connect); when several are set the smallest offset wins (ties: cut, reset, stall).
A fault upstream also ends the downstream direction. Every delay goes through the
injected `sleep`, so tests never wait for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, Self, TypeAlias

from transfer.core.errors import ConfigError

_CHUNK = 64 * 1024
_KINDS = ("cut", "reset", "stall")


@dataclass(frozen=True, slots=True)
class Fault:
    """What one connection suffers; every default means "nothing"."""

    cut_after: int | None = None
    reset_after: int | None = None
    stall_after: int | None = None
    latency: float = 0.0
    bandwidth: int | None = None

    def __post_init__(self) -> None:
        offsets = (self.cut_after, self.reset_after, self.stall_after)
        if any(offset is not None and offset < 0 for offset in offsets) or self.latency < 0:
            raise ConfigError(f"fault offsets and latency must not be negative: {self}")
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ConfigError(f"fault bandwidth must be positive: {self}")

    def trigger(self) -> tuple[int, str] | None:
        """The fault that fires first, as `(offset, kind)`, or None."""
        kinds = zip(_KINDS, (self.cut_after, self.reset_after, self.stall_after), strict=True)
        return min(((offset, kind) for kind, offset in kinds if offset is not None), default=None)


NO_FAULT = Fault()
Plan: TypeAlias = Callable[[int], Fault] | Fault
Sleep: TypeAlias = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class ProxyStats:
    """Counters over the proxy's lifetime; bytes are those actually forwarded."""

    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    cuts: int = 0
    resets: int = 0
    stalls: int = 0


@dataclass(slots=True)
class _Link:
    fault: Fault
    client_r: asyncio.StreamReader
    client_w: asyncio.StreamWriter
    server_r: asyncio.StreamReader
    server_w: asyncio.StreamWriter


class _FaultFired(Exception):
    """Raised by the upstream pipe to end both directions after a fault."""


class FaultProxy:
    """Forwards connections to `target_host:target_port`, injecting each one's `Fault`."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        plan: Plan = NO_FAULT,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._target = (target_host, target_port)
        self._plan = _as_plan(plan)
        self._sleep = sleep
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._release = asyncio.Event()  # set (and replaced) to end the current stalls
        self._closing = False
        self.stats = ProxyStats()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start listening; returns the bound port."""
        if self._server is not None:
            raise RuntimeError("proxy already started")
        self._server = await asyncio.start_server(self._handle, host, port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self._port

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("proxy not started")
        return self._port

    def set_plan(self, plan: Plan) -> None:
        """Use `plan` for new connections; open ones keep their fault, but stalls end."""
        self._plan = _as_plan(plan)
        self._release.set()
        self._release = asyncio.Event()

    async def close(self) -> None:
        """Stop listening and close every open connection."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._closing:
            client_w.close()
            return
        task = asyncio.create_task(self._serve(client_r, client_w))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # close() cancels `task`, never this handler: Python 3.11's start_server logs an
        # error for a cancelled handler. Bugs still surface through result().
        try:
            await asyncio.wait([task])
        finally:
            task.cancel()
        if not task.cancelled():
            task.result()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        fault = self._plan(self.stats.connections)
        self.stats.connections += 1
        server_w: asyncio.StreamWriter | None = None
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
            await self._run(_Link(fault, client_r, client_w, server_r, server_w))
        except* (OSError, _FaultFired):
            pass  # a fault or a peer's failure ends this connection only
        finally:
            await _close(client_w, server_w)

    async def _run(self, link: _Link) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._upstream(link))
            group.create_task(self._pump(link, None, up=False))

    async def _upstream(self, link: _Link) -> None:
        trigger = link.fault.trigger()
        if trigger is None:
            await self._pump(link, None, up=True)
        elif await self._pump(link, trigger[0], up=True):
            await self._fire(trigger[1], link)

    async def _pump(self, link: _Link, budget: int | None, *, up: bool) -> bool:
        """Forward one direction until EOF (half-close it; False) or `budget` bytes (True)."""
        reader, writer = (link.client_r, link.server_w) if up else (link.server_r, link.client_w)
        moved = 0
        while budget is None or moved < budget:
            size = _CHUNK if budget is None else min(_CHUNK, budget - moved)
            data = await reader.read(min(size, link.fault.bandwidth or _CHUNK))
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return False
            await self._delay(link.fault, len(data))
            writer.write(data)
            await writer.drain()
            moved += len(data)
            if up:
                self.stats.bytes_up += len(data)
            else:
                self.stats.bytes_down += len(data)
        return True

    async def _delay(self, fault: Fault, size: int) -> None:
        # bandwidth: reads are at most `bandwidth` bytes, so no single delay exceeds ~1 s
        delay = fault.latency + (size / fault.bandwidth if fault.bandwidth else 0.0)
        if delay > 0:
            await self._sleep(delay)

    async def _fire(self, kind: str, link: _Link) -> NoReturn:
        if kind == "stall":
            self.stats.stalls += 1
            await self._release.wait()
        elif kind == "reset":
            self.stats.resets += 1
            _abort(link.client_w)
            _abort(link.server_w)
        else:
            self.stats.cuts += 1
            # FIN first: closing with unread input would otherwise send an RST instead.
            for writer in (link.client_w, link.server_w):
                writer.write_eof()
        raise _FaultFired(kind)


def random_plan(
    seed: int, *, rate: float, max_offset: int, kinds: Sequence[str] = _KINDS
) -> Callable[[int], Fault]:
    """A reproducible plan: connection n is faulted with probability `rate`; its kind
    and offset in `[0, max_offset)` come from `random.Random(f"{seed}:{n}")`."""
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"fault rate must be within [0, 1], not {rate}")
    if max_offset < 1:
        raise ConfigError(f"max_offset must be at least 1, not {max_offset}")
    if not kinds or not set(kinds) <= set(_KINDS):
        raise ConfigError(f"fault kinds must be some of {', '.join(_KINDS)}, not {kinds!r}")
    choices = tuple(kinds)

    def plan(number: int) -> Fault:
        rng = random.Random(f"{seed}:{number}")
        if rng.random() >= rate:
            return NO_FAULT
        return Fault(**{f"{rng.choice(choices)}_after": rng.randrange(max_offset)})

    return plan


def _as_plan(plan: Plan) -> Callable[[int], Fault]:
    if isinstance(plan, Fault):
        fault = plan
        return lambda _number: fault
    return plan


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with an RST: SO_LINGER 0 makes the kernel drop the socket at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close(*writers: asyncio.StreamWriter | None) -> None:
    live = [writer for writer in writers if writer is not None]
    for writer in live:
        writer.close()
    for writer in live:
        with contextlib.suppress(OSError):
            await writer.wait_closed()
