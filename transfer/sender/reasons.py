"""Values the sender writes that are not server error codes: a registry, not literals.

`upload.resync` carries a `code` (the server's refusal code, or one of these when the
sender itself chose to resync); `sender.stopping` carries a `reason`; a refusal whose
body named no code carries `UNKNOWN`. Like `Event` names they are read back from logs:
add, never rename. A member is a `str`, so it renders and compares as its value.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    # upload.resync `code`: a 308 acknowledged less than the pipelined chunk's end
    SHORT_ACKNOWLEDGEMENT = "short_acknowledgement"
    # sender.stopping `reason`: SIGINT or SIGTERM
    SIGNAL = "signal"
    # the code of a refusal whose body was no problem+json with a `code`
    UNKNOWN = "unknown"
