"""What the pipeline and the status server ask of any `Journal`, answered cheaply by a
`FileJournal` (counting, resuming and generating decode no folded record) and by reading
every entry for any other journal (a test's wrapper, say).

Invariant: for every journal the answers equal those computed from `entries()`.
"""

from __future__ import annotations

from transfer.core.filestate import FileState
from transfer.sender.journal import FileJournal, Journal, JournalEntry


def live_entries(journal: Journal) -> list[JournalEntry]:
    """A `FileJournal`'s entries not folded into its checkpoint (every unconfirmed one is
    among them); any other journal's every entry."""
    return journal.live() if isinstance(journal, FileJournal) else journal.entries()


def count_states(journal: Journal) -> dict[str, int]:
    """Entries by state; a `FileJournal` counts without decoding folded records."""
    if isinstance(journal, FileJournal):
        return journal.counts()
    result = {state.value: 0 for state in FileState}
    for entry in journal.entries():
        result[entry.state.value] += 1
    return result


def folded_indices(journal: Journal, run: str) -> set[int]:
    """The generated indices of `run` folded into a `FileJournal`'s checkpoint."""
    return journal.folded_indices(run) if isinstance(journal, FileJournal) else set()
