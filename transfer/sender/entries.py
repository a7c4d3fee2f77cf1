"""The values a journal holds, and their payload form: one file's latest state
(`JournalEntry`) or a meta setting (`MetaRecord`).

Invariants: a payload is compact ASCII JSON with a `kind`; optional fields are written
only when set, so frames written before a field existed stay byte-identical and still
decode; a state changes only through `core.filestate`'s table (`JournalEntry.after`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

from transfer.core.filestate import FileEvent, FileState, next_state

_FILE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_OPTIONAL = ("rel", "mtime_ns", "version", "upload_url", "verified")  # written only when set


@dataclass(frozen=True, slots=True)
class JournalEntry:
    file_id: str  # client-chosen upload id, [A-Za-z0-9_-]{1,64}
    name: str
    path: str  # absolute path of the file on the sender's disk
    size: int
    dtype: str  # e.g. "int16"
    digest: str  # hex xxh3-128 of the file's bytes
    state: FileState
    server_digest: str | None = None  # hex digest the server returned when confirmed
    reason: str | None = None  # why it failed
    # A watched file (`send --watch`) also carries what recognises it: its path relative
    # to the watched folder, its mtime when journaled and its version (1, 2, ... per path).
    rel: str | None = None
    mtime_ns: int | None = None
    version: int | None = None
    # Where the server names the upload (`send --protocol tus`): its URL, journaled before
    # the first byte is sent; and, for a file confirmed without a whole-file digest, what
    # was checked instead (`per-chunk-checksum`, `length-only`).
    upload_url: str | None = None
    verified: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.file_id, str) or not _FILE_ID.fullmatch(self.file_id):
            raise ValueError(f"invalid file_id {self.file_id!r}")
        if not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"invalid size {self.size!r}")

    def after(
        self, event: FileEvent, *, server_digest: str | None = None, reason: str | None = None
    ) -> JournalEntry:
        """This entry once `event` happened: the next state comes from the one table,
        `filestate.TRANSITIONS`; `server_digest` and `reason` replace the old ones.

        Raises:
            IllegalTransition: `event` is no legal move from this state (self is unchanged).
        """
        state = next_state(self.state, event)
        return dataclasses.replace(self, state=state, server_digest=server_digest, reason=reason)


@dataclass(frozen=True, slots=True)
class MetaRecord:
    key: str
    value: str


Record = JournalEntry | MetaRecord


_FIELDS = tuple(f.name for f in dataclasses.fields(JournalEntry))  # in declaration order
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


def encode_record(record: Record) -> bytes:
    """The payload of `record`: compact JSON, ASCII only (non-ASCII text is escaped); the
    fields in declaration order after `kind`, as `dataclasses.asdict` gave them (which
    cost 4x more: it deep-copies every value)."""
    if isinstance(record, MetaRecord):
        fields: dict[str, object] = {"kind": "meta", "key": record.key, "value": record.value}
    else:
        fields = {"kind": "file"}
        for name in _FIELDS:
            value = getattr(record, name)
            if value is not None or name not in _OPTIONAL:  # older frames stay byte-identical
                fields[name] = value
        fields["state"] = record.state.value
    return _ENCODER.encode(fields).encode("ascii")


def decode_record(payload: bytes) -> Record:
    """Raises ValueError or TypeError if `payload` is not a record this module wrote."""
    fields = json.loads(payload)
    if not isinstance(fields, dict):
        raise TypeError("a record must be a JSON object")
    kind = fields.pop("kind", None)
    if kind == "meta":
        return MetaRecord(**fields)
    if kind == "file":
        return JournalEntry(**{**fields, "state": FileState(fields.get("state"))})
    raise ValueError(f"unknown record kind {kind!r}")
