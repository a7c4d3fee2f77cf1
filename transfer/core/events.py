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
    UPLOAD_CONCATENATED = "upload.concatenated"  # tus: a final upload built from partials
    # hooks (server/hooks.py, hookdelivery.py, precreate.py)
    HOOK_DELIVERED = "hook.delivered"  # every target took the event; removed from the outbox
    HOOK_RETRY = "hook.retry"  # an attempt failed; the next one after a back-off
    HOOK_DROPPED = "hook.dropped"  # an unresolved completion whose upload never completed
    HOOK_REJECTED = "hook.rejected"  # the pre-create hook refused an upload (4xx)
    HOOK_UNAVAILABLE = "hook.unavailable"  # the pre-create hook did not answer: 503
    UPLOAD_PREEMPTED = "upload.preempted"  # a slow body cut to free its slot
    TOKENS_RELOADED = "tokens.reloaded"  # SIGHUP: --tokens-file read again
    TOKENS_RELOAD_FAILED = "tokens.reload_failed"  # SIGHUP: unreadable; the old table kept
    # the S3 + PostgreSQL store (store/s3/)
    STORE_REHASHED = "store.rehashed"  # a whole file hashed from S3 (after a fail-over)
    STORE_CLEANUP_FAILED = "store.cleanup_failed"  # an orphan left for the sweep
    STORE_ORPHANS_REMOVED = "store.orphans_removed"  # the sweep removed some
    SWEEP_FAILED = "sweep.failed"  # a background sweep met a storage failure; tried again
    RECORD_EXPIRED = "record.expired"  # --record-ttl removed a completed upload's record
    STORE_MIGRATED = "store.migrated"  # start-up moved flat-layout records into records/
    # the connection layer (server/connlimit.py): rate-limited, never one line per connection
    CONNECTION_REFUSED = "connection.refused"  # once per reason and address per minute
    CONNECTION_EVICTED = "connection.evicted"  # once per reason per minute
    FD_LIMIT_RAISED = "server.fd_limit_raised"
    # the sender
    SENDER_STARTED = "sender.started"
    SENDER_STOPPING = "sender.stopping"
    SEND_SUMMARY = "send.summary"
    JOURNAL_COMPACTED = "journal.compacted"  # confirmed files folded into journal.ckpt
    JOURNAL_COMPACTION_FAILED = "journal.compaction_failed"  # logged; retried later
    JOURNAL_READ_RETRY = "journal.read_retry"  # status/verify raced a compaction; read again
    GENERATION_STARTED = "generation.started"
    GENERATION_FINISHED = "generation.finished"
    FILE_GENERATED = "file.generated"
    FILE_REQUEUED = "file.requeued"
    CHUNK_SENT = "chunk.sent"
    UPLOAD_RESUMED = "upload.resumed"
    UPLOAD_RESYNC = "upload.resync"
    UPLOAD_RETRY = "upload.retry"
    SERVER_UNREACHABLE = "server.unreachable"  # once per outage, not per retry
    SERVER_REACHABLE = "server.reachable"  # the first success after an outage
    SERVER_SWITCHED = "server.switched"  # `send --server` given twice: moved to the next
    UPLOAD_MISMATCH = "upload.mismatch"
    UPLOAD_CONFIRMED = "upload.confirmed"
    UPLOAD_FAILED = "upload.failed"
    # the sender's watch mode (`send --watch`)
    WATCH_STARTED = "watch.started"
    WATCH_RESCAN = "watch.rescan"
    WATCH_OVERFLOW = "watch.overflow"
    WATCH_TAKEN = "watch.taken"
    WATCH_CHANGED = "watch.changed"
    WATCH_CHANGE_REFUSED = "watch.change_refused"
    WATCH_MOVED = "watch.moved"
    WATCH_VANISHED = "watch.vanished"
    WATCH_ERROR = "watch.error"
    SOURCE_DELETED = "source.deleted"
    SOURCE_MOVED = "source.moved"
    SOURCE_CHANGED = "source.changed"
