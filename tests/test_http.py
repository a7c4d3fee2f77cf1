"""The one session factory: no session of ours re-sends a request behind our back."""

from __future__ import annotations

import aiohttp
import pytest

from transfer.common import http
from transfer.common.http import HiddenRetryUnknown, new_session, without_hidden_retries


async def test_aiohttp_still_has_the_private_retry_switch() -> None:
    # If this fails, aiohttp renamed or removed it: find how that version retries, then
    # adapt common/http.py and the version bound in pyproject.toml.
    async with aiohttp.ClientSession() as session:
        assert getattr(session, http._PRIVATE_RETRY) is True


async def test_new_sessions_never_retry_on_their_own() -> None:
    async with new_session() as session:
        assert getattr(session, http._PRIVATE_RETRY) is False


async def test_pytest_clients_are_made_the_same_way(aiohttp_client: object) -> None:
    from aiohttp import web

    client = await aiohttp_client(web.Application())  # type: ignore[operator]
    assert getattr(client.session, http._PRIVATE_RETRY) is False


async def test_an_unknown_aiohttp_is_refused_not_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "_PRIVATE_RETRY", "_no_such_attribute")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(HiddenRetryUnknown, match=r"no ClientSession\._no_such_attribute"):
            without_hidden_retries(session)
