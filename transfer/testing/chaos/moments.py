"""The kill moments: which side dies when, and the probe that spots that moment.

    sender  generation      a `file.generated` line of this run
    sender  mid_chunk       a `.part` growing: a chunk being written (else after 1-4 chunk.sent)
    sender  before_confirm  the server logged `upload.completed` for a file the sender has
                            not logged as confirmed
    sender  compaction      a journal compaction's temporary file in the spool (else right
                            after a `journal.compacted`); only with `--journal-compact-at`
    server  mid_chunk       as above (else after 1-4 PUTs with bytes in the access log)
    server  publish         a `.part` holding all its bytes, not yet published (else right
                            after an `upload.completed`)
    both    random          a seeded delay of 0-1 s after the process started

Invariants: every random choice comes from the run's one `random.Random(seed)`, in the
same order each cycle (side, moment, delay, then the mid-chunk fallback count), so a seed
replays the same sequence of intentions. A probe only reads logs and the uploads
directory; it returns the label of the moment it saw (a fallback has its own label), or
None while the moment has not come.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from transfer.core.events import Event
from transfer.testing.chaos.offsets import upload_of
from transfer.testing.chaos.uploads import Uploads
from transfer.testing.children import TransferChild
from transfer.testing.logs import LogFile

SENDER_MOMENTS = ("generation", "mid_chunk", "before_confirm", "random")
SERVER_MOMENTS = ("mid_chunk", "publish", "random")
Probe = Callable[[], str | None]


class Moments:
    """Chooses each cycle's victim and moment; builds the probe that waits for it."""

    def __init__(
        self,
        rng: random.Random,
        count: int,
        logs: tuple[LogFile, LogFile],
        uploads: Uploads,
        compacting: Path | None = None,
    ) -> None:
        self.rng, self.count, self.uploads = rng, count, uploads
        self.server_log, self.sender_log = logs
        self.spool = compacting  # the spool, when compaction is forced to run often

    def choose(self, sides: Sequence[str]) -> tuple[str, str, float]:
        """(side, moment, delay for `random`)."""
        side = self.rng.choice(sides)
        if side == "sender":
            moments = [m for m in SENDER_MOMENTS if m != "generation" or self._generating()]
            moments += ["compaction"] if self.spool is not None else []
        else:
            moments = list(SERVER_MOMENTS)
        return side, self.rng.choice(moments), self.rng.uniform(0.0, 1.0)

    def probe(
        self, side: str, moment: str, victim: TransferChild, delay: float, peer_mark: int
    ) -> Probe:
        """The probe for `moment` of `victim`; `peer_mark`: the server log's length when
        the running sender started."""
        if moment == "random":
            return lambda: "random" if time.monotonic() - victim.started >= delay else None
        if moment == "generation":
            return lambda: "generation" if victim.named(Event.FILE_GENERATED) else None
        if moment == "before_confirm":
            return lambda: "before_confirm" if self._unconfirmed_completion(peer_mark) else None
        if moment == "publish":
            return self._publish_probe(victim)
        if moment == "compaction":
            return self._compaction_probe(victim)
        return self._mid_chunk_probe(side, victim, self.rng.randint(1, 4))

    def _generating(self) -> bool:
        generated = {e.get("file_id") for e in self.sender_log.named(Event.FILE_GENERATED)}
        return len(generated) < self.count

    def _mid_chunk_probe(self, side: str, victim: TransferChild, after: int) -> Probe:
        def probe() -> str | None:
            if self.uploads.look()[0]:
                return "mid_chunk"
            if side == "sender":
                fallback = len(victim.named(Event.CHUNK_SENT))
            else:
                requests = victim.named(Event.REQUEST)
                fallback = sum(1 for e in requests if e.get("method") == "PUT" and e.get("bytes"))
            return "after_chunk" if fallback >= after else None

        return probe

    def _publish_probe(self, victim: TransferChild) -> Probe:
        def probe() -> str | None:
            if self.uploads.look()[1]:
                return "publish"
            return "after_publish" if victim.named(Event.UPLOAD_COMPLETED) else None

        return probe

    def _compaction_probe(self, victim: TransferChild) -> Probe:
        temporary = [self.spool / f"journal.{n}.tmp" for n in ("ckpt", "log")] if self.spool else []

        def probe() -> str | None:
            if any(path.exists() for path in temporary):
                return "compaction"
            return "after_compaction" if victim.named(Event.JOURNAL_COMPACTED) else None

        return probe

    def _unconfirmed_completion(self, peer_mark: int) -> bool:
        """The server completed a file after this sender started, and it is not confirmed."""
        completed = self.server_log.named(Event.UPLOAD_COMPLETED, since=peer_mark)
        confirmed = {upload_of(e) for e in self.sender_log.named(Event.UPLOAD_CONFIRMED)}
        return bool({e.get("upload_id") for e in completed} - confirmed)
