"""What the tus and IETF clients share: the book of upload URLs a server assigned.

Invariant: a URL is in the book only once it may be journaled (the server answered its
creation), or because the journal handed it back (`adopt`) after a restart; `create`
first asks whether an adopted upload still exists before making a second one.
"""

from __future__ import annotations

from transfer.sender.client import Progress


class UrlBook:
    """File id -> upload URL, while a file is delivered. Subclasses define `query`."""

    def __init__(self) -> None:
        self._urls: dict[str, str] = {}

    def adopt(self, file_id: str, location: str | None) -> None:
        if location is not None:
            self._urls[file_id] = location

    def forget(self, file_id: str) -> None:
        self._urls.pop(file_id, None)

    async def query(self, file_id: str) -> Progress:
        raise NotImplementedError

    async def _adopted(self, file_id: str) -> Progress | None:
        """The adopted upload's state if the server still has it, else None."""
        if file_id in self._urls:
            known = await self.query(file_id)
            if not known.missing:
                return known
        return None
