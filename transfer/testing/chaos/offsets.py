"""The offset invariant: an acknowledged offset never goes backwards.

Two views of it: after every server restart each partial upload's `HEAD` offset is at
least the highest offset the sender logged as acknowledged (`check_head`), and no chunk
is ever sent from below an offset acknowledged earlier (`check_sent`). An
`upload.mismatch` (the server reset the upload to 0) lawfully forgets what was
acknowledged for that file. Offsets are kept per upload id (`upload_of`): the file id
natively, the server-assigned id a tus sender binds to its log lines.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable

from transfer.core.events import Event
from transfer.testing.logs import LogLine


def upload_of(event: LogLine) -> str:
    """The upload a sender's log line is about: `upload_id` where the server named the
    upload (tus), else the file id (natively the same)."""
    return str(event.get("upload_id") or event.get("file_id"))


def acknowledged(events: Iterable[LogLine]) -> dict[str, int]:
    """Per unconfirmed upload, the highest offset the sender logged as acknowledged."""
    acked: dict[str, int] = {}
    done: set[str] = set()
    for event in events:
        file_id = upload_of(event)
        if event.get("event") == Event.CHUNK_SENT:
            acked[file_id] = max(acked.get(file_id, 0), int(event.get("acknowledged", 0)))
        elif event.get("event") == Event.UPLOAD_MISMATCH:  # the server reset it to 0
            acked.pop(file_id, None)
        elif event.get("event") == Event.UPLOAD_CONFIRMED:
            done.add(file_id)
    return {k: v for k, v in acked.items() if k not in done}


def check_head(server_url: str, upload_id: str, offset: int) -> str | None:
    """A violation if the server's offset for `upload_id` is below `offset`."""
    try:
        request = urllib.request.Request(f"{server_url}/uploads/{upload_id}", method="HEAD")
        with urllib.request.urlopen(request, timeout=10) as response:
            headers = response.headers
    except (urllib.error.URLError, OSError) as exc:
        return f"HEAD {upload_id} after a server restart failed: {exc}"
    if headers.get("Upload-Complete") == "?1":
        return None
    now = int(headers.get("Upload-Offset", "-1"))
    if now < offset:
        return f"{upload_id}: offset {now} after a restart < acknowledged {offset}"
    return None


def check_sent(events: Iterable[LogLine]) -> list[str]:
    """Violations: chunks sent from below an offset the server acknowledged earlier."""
    acked: dict[str, int] = {}
    found: list[str] = []
    for event in events:
        file_id = upload_of(event)
        if event.get("event") == Event.UPLOAD_MISMATCH:
            acked.pop(file_id, None)
        elif event.get("event") == Event.CHUNK_SENT:
            start = int(event.get("offset", 0))
            if start < acked.get(file_id, 0):
                found.append(
                    f"{file_id}: chunk sent from {start} after {acked[file_id]} was acknowledged"
                )
            acked[file_id] = max(acked.get(file_id, 0), int(event.get("acknowledged", 0)))
    return found
