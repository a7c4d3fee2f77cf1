"""A `FaultProxy` served by a thread's own event loop, for synchronous callers.

Kill tests and the chaos runner drive real processes from plain (non-async) code; this
puts the proxy between them without an event loop of their own:

    with ProxyThread(server.port, Fault(bandwidth=4 * MiB)) as proxy:
        launch.send(proxy.url, ...)

Invariants: `start` returns only once the proxy listens (or raises with the reason it
could not); `stop` ends the proxy's loop and joins the thread within the deadline; the
thread is a daemon, so a test that forgets to stop it cannot hang the interpreter.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Self

from transfer.testing.faultproxy import FaultProxy, Plan, ProxyStats

HOST = "127.0.0.1"
DEADLINE = 20.0  # seconds to start or to stop


class ProxyThread:
    """`FaultProxy(HOST, target_port, plan=plan)` in a daemon thread; `port`, `url`, `stats`."""

    def __init__(self, target_port: int, plan: Plan, *, deadline: float = DEADLINE) -> None:
        self._target_port, self._plan, self._deadline = target_port, plan, deadline
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.port = 0
        self.stats = ProxyStats()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(self._deadline) or self._error is not None:
            raise RuntimeError(f"fault proxy did not start: {self._error!r}")

    def stop(self) -> None:
        """Idempotent: a proxy already stopped (its loop closed) is left as it is."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(self._deadline)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start(); the thread just ends
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with FaultProxy(HOST, self._target_port, plan=self._plan) as proxy:
            self.port, self.stats = proxy.port, proxy.stats
            self._ready.set()
            await self._stop.wait()
