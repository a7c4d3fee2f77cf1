"""Who holds the server's connections, and who gives one up when the server is full.

The rules of the connection layer (`connlimit.py` is the asyncio side), without sockets:

- A connection is in one of three states (`ConnState`): `reading_headers` (opened, or
  kept alive and sending the next request, but its request headers are not complete),
  `in_body` (headers complete: the body is arriving, the handler runs or the answer is
  being written) or `idle_keepalive` (between two requests, nothing sent yet).
- `admit` decides for a new connection, before any of its bytes is read: refused when
  its address already holds `per_ip` connections (peers inside a trusted proxy network
  are exempt: one proxy carries many clients); when `max_connections` are open, the
  oldest `reading_headers` connection is evicted to make room, else the longest-open
  `idle_keepalive` one, else the newcomer is refused. An `in_body` connection is never
  evicted, whatever arrives.
- Every refusal and eviction is counted in the metrics by reason; it is logged at most
  once per minute per (reason, address) or per eviction reason, so an attacker cannot
  turn connections into log lines.

Invariants: a connection is counted (globally and under its address) from `admit` to
`gone`/eviction, exactly once; the `_reading` order is the order in which connections
started their current request headers, so its first entry is the oldest.
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from transfer.common.metrics import Metrics
from transfer.core.events import Event

log = structlog.get_logger("transfer.server")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Measured (scripts/conn_bench.py, docs/security.md): an idle kept-alive connection costs
# about 9 KiB of the server's RSS, so 10 000 hold in about 90 MiB plus the kernel's share.
DEFAULT_MAX_CONNECTIONS = 10_000
LOG_EVERY = 60.0  # seconds between two log lines for one key


class ConnState(enum.StrEnum):
    READING_HEADERS = "reading_headers"
    IN_BODY = "in_body"
    IDLE_KEEPALIVE = "idle_keepalive"


class Verdict(enum.Enum):
    ADMIT = "admit"
    PER_IP = "per_ip"  # 429 too_many_connections_per_ip
    FULL = "full"  # 503 too_many_connections: nothing could be evicted


class Eviction(enum.StrEnum):
    HEADER_TIMEOUT = "header_timeout"
    ROOM_READING_HEADERS = "room_reading_headers"
    ROOM_IDLE_KEEPALIVE = "room_idle_keepalive"


@dataclass(frozen=True, slots=True)
class ConnLimits:
    """The connection flags of `transfer serve`."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    per_ip: int = 64
    header_timeout: float = 10.0
    trusted: tuple[Network, ...] = ()

    def trusts(self, address: str) -> bool:
        """Is `address` inside one of the `--trusted-proxy` networks?"""
        if not self.trusted:
            return False  # the default: no address to parse, on every request
        ip = _ip(address)
        return ip is not None and any(ip in network for network in self.trusted)


class Conn(Protocol):
    """What the tracker needs of a connection."""

    @property
    def peer(self) -> str: ...

    def state(self) -> ConnState: ...

    def evict(self) -> None: ...


def client_address(peer: str, forwarded_for: Sequence[str], limits: ConnLimits) -> str:
    """The address a request is attributed to.

    `peer` itself, unless it is a trusted proxy: then `X-Forwarded-For` (every header
    line, in order) is read from the right, skipping trusted proxies, and the first
    untrusted address is the client. An entry that is not an IP address stops the walk
    at the last hop that was trusted (it, not the garbage, is blamed). A forged header
    from an untrusted peer is never read.
    """
    address = peer
    hops = [hop.strip() for line in forwarded_for for hop in line.split(",")]
    while limits.trusts(address) and hops:
        hop = hops.pop()
        if _ip(hop) is None:
            break
        address = hop
    return address


def parse_network(text: str) -> Network:
    """A `--trusted-proxy` value: `10.0.0.0/8`, `192.0.2.7`, `::1/128`.

    Raises:
        ValueError: not an address or network (host bits set included).
    """
    return ipaddress.ip_network(text.strip(), strict=True)


class LogLimiter:
    """At most one line per key per `every` seconds; counts the ones it held back.

    Bounded: past `max_keys` keys, those not logged within `every` are forgotten first,
    then the least recently logged.
    """

    def __init__(
        self, clock: Callable[[], float], every: float = LOG_EVERY, max_keys: int = 4096
    ) -> None:
        self._clock, self._every, self._max = clock, every, max_keys
        self._seen: dict[tuple[str, ...], tuple[float, int]] = {}

    def due(self, *key: str) -> int | None:
        """How many occurrences this line stands for (held back ones included), or None
        when it is to be held back."""
        now = self._clock()
        last, held = self._seen.pop(key, (None, 0))
        if last is not None and now - last < self._every:
            self._seen[key] = (last, held + 1)
            return None
        self._seen[key] = (now, 0)
        self._forget(now)
        return held + 1

    def _forget(self, now: float) -> None:
        if len(self._seen) <= self._max:
            return
        self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self._every}
        while len(self._seen) > self._max:
            del self._seen[next(iter(self._seen))]


class Tracker:
    """The open connections of one listener: admission, eviction, counts, metrics."""

    def __init__(
        self, limits: ConnLimits, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self._metrics = metrics
        self._log = LogLimiter(clock)
        self._open: dict[Conn, None] = {}  # insertion order: oldest connection first
        self._reading: dict[Conn, None] = {}  # order of their current header start
        self._per_ip: dict[str, int] = {}
        describe(metrics)
        for verdict in (Verdict.PER_IP, Verdict.FULL):  # zero until it happens, not absent
            metrics.inc("transfer_connections_refused_total", 0, reason=verdict.value)
        for reason in Eviction:
            metrics.inc("transfer_connections_evicted_total", 0, reason=reason)
        metrics.collect(self.refresh)

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, conn: Conn) -> Verdict:
        """Count `conn` in, making room if the server is full; or say why not."""
        peer = conn.peer
        if not self.limits.trusts(peer) and self._per_ip.get(peer, 0) >= self.limits.per_ip:
            return self._refuse(Verdict.PER_IP, peer)
        if len(self._open) >= self.limits.max_connections and not self._make_room():
            return self._refuse(Verdict.FULL, peer)
        self._open[conn] = None
        self._per_ip[peer] = self._per_ip.get(peer, 0) + 1
        return Verdict.ADMIT

    def reading(self, conn: Conn) -> None:
        """`conn` started (or is opened before) a request's headers: now the newest."""
        self._reading.pop(conn, None)
        if conn in self._open:
            self._reading[conn] = None

    def headers_done(self, conn: Conn) -> None:
        self._reading.pop(conn, None)

    def gone(self, conn: Conn) -> None:
        """`conn` closed (or was evicted): its place is free. Idempotent."""
        self._reading.pop(conn, None)
        if conn in self._open:
            del self._open[conn]
            left = self._per_ip[conn.peer] - 1
            if left:
                self._per_ip[conn.peer] = left
            else:
                del self._per_ip[conn.peer]

    def expired(self, conn: Conn) -> None:
        """`conn` did not complete its request headers within the header timeout."""
        self._evict(conn, Eviction.HEADER_TIMEOUT)

    def refresh(self) -> None:
        """Set the connections-by-state gauges (called when /metrics is rendered)."""
        counts = dict.fromkeys(ConnState, 0)
        for conn in self._open:
            counts[conn.state()] += 1
        for state, count in counts.items():
            self._metrics.set("transfer_connections", count, state=state)

    def _make_room(self) -> bool:
        oldest = next(iter(self._reading), None)
        if oldest is not None:
            self._evict(oldest, Eviction.ROOM_READING_HEADERS)
            return True
        idle = next((c for c in self._open if c.state() is ConnState.IDLE_KEEPALIVE), None)
        if idle is not None:
            self._evict(idle, Eviction.ROOM_IDLE_KEEPALIVE)
            return True
        return False

    def _evict(self, conn: Conn, reason: Eviction) -> None:
        self.gone(conn)
        conn.evict()
        self._metrics.inc("transfer_connections_evicted_total", reason=reason)
        count = self._log.due("evicted", reason)
        if count is not None:
            log.info(Event.CONNECTION_EVICTED, reason=reason, evicted=count, last=conn.peer)

    def _refuse(self, verdict: Verdict, peer: str) -> Verdict:
        self._metrics.inc("transfer_connections_refused_total", reason=verdict.value)
        count = self._log.due("refused", verdict.value, peer)
        if count is not None:
            log.warning(Event.CONNECTION_REFUSED, reason=verdict.value, address=peer, refused=count)
        return verdict


def describe(metrics: Metrics) -> None:
    metrics.describe("transfer_connections", "gauge", "Open connections by state")
    metrics.describe(
        "transfer_connections_refused_total", "counter", "Connections refused, by reason"
    )
    metrics.describe(
        "transfer_connections_evicted_total", "counter", "Connections closed by the server"
    )


def networks(texts: Iterable[str]) -> tuple[Network, ...]:
    return tuple(parse_network(text) for text in texts)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
