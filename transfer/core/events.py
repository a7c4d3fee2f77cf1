"""Every log event name `transfer` emits, once.

Log lines are JSON objects whose `event` is one of these names; `transfer report`, the
chaos runner, the benchmarks and the tests read the logs by these members, never by
literals, so a renamed event cannot silently drop out of a report. A member is a `str`,
so it renders as its name in JSON and compares equal to a name read back from a log.
The names themselves are a contract (docs/operations.md): add, never rename.
"""

from __future__ import annotations

import enum


class Event(enum.StrEnum):
    # the server
    SERVER_STARTED = "server.started"
    SERVER_STOPPING = "server.stopping"
    SERVER_STOPPED = "server.stopped"
    REQUEST = "request"  # one access line per request
    REQUEST_CRASHED = "request.crashed"
    UPLOAD_CREATED = "upload.created"
    UPLOAD_COMPLETED = "upload.completed"
    UPLOAD_DELETED = "upload.deleted"
    UPLOAD_EXPIRED = "upload.expired"
    UPLOAD_RESET = "upload.reset"
    UPLOAD_STALLED = "upload.stalled"
    UPLOAD_TOO_SLOW = "upload.too_slow"
    UPLOAD_DISCONNECTED = "upload.disconnected"
    DIGEST_MISMATCH = "digest.mismatch"
    # the sender
    SENDER_STARTED = "sender.started"
    SENDER_STOPPING = "sender.stopping"
    SEND_SUMMARY = "send.summary"
    GENERATION_STARTED = "generation.started"
    GENERATION_FINISHED = "generation.finished"
    FILE_GENERATED = "file.generated"
    FILE_REQUEUED = "file.requeued"
    CHUNK_SENT = "chunk.sent"
    UPLOAD_RESUMED = "upload.resumed"
    UPLOAD_RESYNC = "upload.resync"
    UPLOAD_RETRY = "upload.retry"
    UPLOAD_MISMATCH = "upload.mismatch"
    UPLOAD_CONFIRMED = "upload.confirmed"
    UPLOAD_FAILED = "upload.failed"
