"""Who is asking (the request's `Principal`), and which namespace its ids live in.

Invariants:
- A request authenticated by `--tokens-file` carries its `Principal` (credential name,
  tenant, scopes) under `PRINCIPAL`; with one `--token` the principal has no tenant and
  every scope; without authentication there is none.
- Every upload id a request names becomes a store key in one place, `scoped_key`
  (through `middleware.bind_upload_id`): `{tenant}~{id}` for a tenant, the id itself
  otherwise. So another tenant's upload is simply absent from the caller's namespace
  (404, never 403), and two tenants may use the same id.
- Only `admin` may name another tenant's namespace, with the `tenant` query parameter;
  anybody else's `?tenant=` is ignored (it answers as the caller's own namespace would).
- `Keyring.reload` swaps the whole table or nothing: a corrupt file keeps the old one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web

from transfer.common import tokenfile
from transfer.core.errors import BadRequest, Code, ConfigError
from transfer.core.events import Event
from transfer.core.tenancy import ALL_SCOPES, Scope, store_key, validate_tenant
from transfer.core.tokens import TokenTable

log = structlog.get_logger("transfer.server")

TENANT_QUERY = "tenant"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    tenant: str | None  # None: the single `--token` (no namespaces)
    scopes: frozenset[Scope]

    def may(self, needed: frozenset[Scope]) -> bool:
        """True when any scope of `needed` is held (admin holds them all)."""
        return not needed or Scope.ADMIN in self.scopes or bool(needed & self.scopes)


SINGLE_TOKEN = Principal("token", None, ALL_SCOPES)
PRINCIPAL = web.RequestKey("principal", Principal)


def principal_of(request: web.Request) -> Principal | None:
    return request.get(PRINCIPAL)


def tenant_in_use(request: web.Request) -> str | None:
    """The namespace the request's ids live in (see the module docstring)."""
    principal = principal_of(request)
    if principal is None or principal.tenant is None:
        return None
    asked = request.query.get(TENANT_QUERY)
    if asked is None or Scope.ADMIN not in principal.scopes:
        return principal.tenant
    try:
        return validate_tenant(asked)
    except ConfigError as exc:
        raise BadRequest(Code.INVALID_TENANT, str(exc)) from None


def scoped_key(request: web.Request, upload_id: str) -> str:
    """The store key of `upload_id` (already validated) for this request."""
    return store_key(tenant_in_use(request), upload_id)


class Keyring:
    """The live credentials of `--tokens-file`, replaced whole on `reload` (SIGHUP)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.table: TokenTable = tokenfile.load(path)

    def lookup(self, token: str) -> Principal | None:
        credential = self.table.lookup(token)
        if credential is None:
            return None
        return Principal(credential.name, credential.tenant, credential.scopes)

    def reload(self) -> bool:
        """Re-read the file; on any error keep the old table and log why."""
        try:
            table = tokenfile.load(self.path)
        except ConfigError as exc:
            kept = len(self.table.credentials)
            # No traceback: the message names the file and what is wrong with it.
            log.error(Event.TOKENS_RELOAD_FAILED, error=str(exc), kept=kept)  # noqa: TRY400
            return False
        self.table = table
        log.info(Event.TOKENS_RELOADED, credentials=len(table.credentials))
        return True
