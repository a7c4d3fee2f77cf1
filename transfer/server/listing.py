"""`GET /uploads`: the unfinished uploads, across tenants (`admin` with `--tokens-file`).

Lists what the store's expiry protocol lists (`partials`): partial uploads only, since
no store keeps an index of completed ones (published files are `files/{tenant}/`).
`?tenant=T` narrows the list to one tenant. Every row names the id as clients know it
and its tenant (null without tenancy); never a store key.
"""

from __future__ import annotations

from aiohttp import web

from transfer.core.errors import BadRequest, Code, ConfigError
from transfer.core.tenancy import public_id, tenant_of, validate_tenant
from transfer.server.state import STATE
from transfer.server.tenants import TENANT_QUERY


async def list_uploads(request: web.Request) -> web.Response:
    asked = _tenant_asked(request)
    partials = await request.app[STATE].store.partials()
    rows = [
        {"tenant": tenant_of(key), "id": public_id(key), "modified": modified}
        for key, modified in partials
        if asked is None or tenant_of(key) == asked
    ]
    rows.sort(key=lambda row: (str(row["tenant"]), str(row["id"])))
    return web.json_response({"uploads": rows}, headers={"Cache-Control": "no-store"})


def _tenant_asked(request: web.Request) -> str | None:
    asked = request.query.get(TENANT_QUERY)
    if asked is None:
        return None
    try:
        return validate_tenant(asked)
    except ConfigError as exc:
        raise BadRequest(Code.INVALID_TENANT, str(exc)) from None
