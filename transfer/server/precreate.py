"""The pre-create hook: asked, synchronously, before a new upload is created.

The question is a signed CloudEvents document of type `dev.transfer.upload.pre_create`
whose `data` is what the client declared (id, tenant, name, size, metadata, protocol).

    2xx                           the upload is created
    4xx                           refused: 403 `rejected_by_hook`; the receiver's reason
                                  (a JSON `detail` or `reason`, else its text, one line,
                                  at most 300 characters) is the problem's `detail`
    5xx, no answer, timeout       fail closed: 503 `hook_unavailable` with Retry-After;
                                  nothing is created

Invariant: nothing is created unless the hook said yes within `--pre-create-hook-timeout`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
import structlog

from transfer.core import cloudevents
from transfer.core.cloudevents import EventType
from transfer.core.errors import Code, ProtocolError, ServiceUnavailable
from transfer.core.events import Event
from transfer.core.records import UploadSpec
from transfer.server.hookdelivery import post_headers

if TYPE_CHECKING:
    from transfer.server.hooks import HookConfig

log = structlog.get_logger("transfer.hooks")
REASON_LIMIT = 300
_READ_LIMIT = 4096  # bytes of the refusal read for its reason


async def ask_pre_create(
    session: aiohttp.ClientSession,
    config: HookConfig,
    spec: UploadSpec,
    clock: Callable[[], float],
) -> None:
    """Ask the hook about `spec`; return if it agrees.

    Raises:
        ProtocolError: `rejected_by_hook` (403) on a 4xx answer.
        ServiceUnavailable: `hook_unavailable` (503) on 5xx, timeout or no connection.
    """
    assert config.pre_create_url is not None
    data = cloudevents.spec_data(spec)
    doc = cloudevents.document(
        EventType.PRE_CREATE, str(uuid.uuid4()), config.source, clock(), data
    )
    body = cloudevents.encode(doc)
    headers = post_headers(config.secret, body, clock())
    timeout = aiohttp.ClientTimeout(total=config.pre_create_timeout)
    try:
        async with session.post(
            config.pre_create_url, data=body, headers=headers, timeout=timeout
        ) as resp:
            status, answer = resp.status, await resp.content.read(_READ_LIMIT)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _unavailable(config, f"{type(exc).__name__}") from exc
    if 200 <= status < 300:
        return
    if 400 <= status < 500:
        reason = reason_of(answer) or f"HTTP {status}"
        log.info(Event.HOOK_REJECTED, status=status, reason=reason)
        raise ProtocolError(Code.REJECTED_BY_HOOK, f"refused by the pre-create hook: {reason}")
    raise _unavailable(config, f"HTTP {status}")


def _unavailable(config: HookConfig, why: str) -> ServiceUnavailable:
    log.warning(Event.HOOK_UNAVAILABLE, reason=why)
    return ServiceUnavailable(
        Code.HOOK_UNAVAILABLE,
        f"the pre-create hook did not answer ({why}); try again later",
        headers={"Retry-After": str(config.retry_after)},
    )


def reason_of(answer: bytes) -> str:
    """A refusal's reason: JSON `detail` or `reason`, else the text; one short line."""
    text = answer.decode(errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        found = doc.get("detail") or doc.get("reason")
        text = found if isinstance(found, str) else text
    return re.sub(r"\s+", " ", text).strip()[:REASON_LIMIT]


__all__ = ["REASON_LIMIT", "ask_pre_create", "reason_of"]
