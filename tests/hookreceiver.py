"""A real HTTP hook receiver for the hook tests: 127.0.0.1, its own port, in a thread.

It records every POST (headers and body, in arrival order) and answers what `answer`
says (204 by default). `stop()` closes the socket, so the server meets "connection
refused", exactly a receiver that is down; `start()` listens again on the same port.
`hold()` makes it keep requests unanswered until `release()` (a hook that times out).
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transfer.core import cloudevents

Answer = Callable[[dict[str, Any]], tuple[int, bytes]]


@dataclass(frozen=True, slots=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc

    def verify(self, secret: bytes, now: float) -> None:
        header = self.headers[cloudevents.SIGNATURE_HEADER]
        cloudevents.verify(secret, self.body, header, now=now)


class Receiver:
    def __init__(self, answer: Answer | None = None) -> None:
        self.received: list[Received] = []
        self.answer: Answer = answer or (lambda doc: (204, b""))
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        handler = _handler(self)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def record(self, item: Received) -> tuple[int, bytes]:
        self._released.wait()
        with self._lock:
            self.received.append(item)
        return self.answer(item.doc)

    def docs(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            docs = [r.doc for r in self.received]
        return [d for d in docs if kind is None or d["type"] == kind]

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.stop()


def _handler(receiver: Receiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status, answer = receiver.record(Received(dict(self.headers.items()), body))
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
