"""Tenants, scopes and the one rule that keeps tenants apart: the store key.

With `--tokens-file` every credential belongs to one tenant, and every upload a request
names lives in its tenant's namespace: the server turns the id a client sees into the
store key `{tenant}~{id}` in one place (`store_key`) and back (`public_id`) in one place.
Upload ids are `[A-Za-z0-9_-]{1,64}` (`protocol.validate_id`) and tenant names
`[a-z0-9][a-z0-9_-]{0,31}`, so `~` never occurs in either half and a key splits one way
only. Without tenancy (no auth, or one `--token`) the key is the id itself, so stores and
their on-disk layout (`files/{id}`) are unchanged.

Invariants:
- `public_id(store_key(t, i)) == i` and `tenant_of(store_key(t, i)) == t`.
- A client never sees a store key: every answer that names an upload uses `public_id`.
"""

from __future__ import annotations

import enum
import re

from transfer.core.errors import ConfigError

SEPARATOR = "~"
_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


class Scope(enum.StrEnum):
    """What a credential may do (docs/security.md, "Scopes")."""

    UPLOAD = "upload"  # create, PUT/PATCH, HEAD of own uploads
    READ = "read"  # GET/HEAD of own uploads, GET /files
    DELETE = "delete"  # DELETE of own uploads
    ADMIN = "admin"  # list, read and delete any tenant's (`?tenant=`), /metrics


ALL_SCOPES = frozenset(Scope)
DEFAULT_SCOPES = frozenset({Scope.UPLOAD, Scope.READ})


def validate_tenant(name: str) -> str:
    """Return `name` if it is a tenant name (it becomes a directory under `files/`).

    Raises:
        ConfigError: otherwise.
    """
    if not _TENANT.fullmatch(name):
        raise ConfigError(
            f"bad tenant name {name!r}: 1-32 characters of [a-z0-9_-], starting with a letter "
            "or digit"
        )
    return name


def parse_scopes(names: list[str]) -> frozenset[Scope]:
    """Scope names as a set (duplicates allowed, order ignored).

    Raises:
        ConfigError: an unknown name.
    """
    scopes = set()
    for name in names:
        try:
            scopes.add(Scope(name))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise ConfigError(f"bad scope {name!r}: one of {known}") from None
    return frozenset(scopes)


def store_key(tenant: str | None, upload_id: str) -> str:
    """The key a store knows the tenant's upload by (the id itself without tenancy)."""
    return upload_id if tenant is None else f"{tenant}{SEPARATOR}{upload_id}"


def public_id(key: str) -> str:
    """The id a client knows a store key by."""
    return key.rpartition(SEPARATOR)[2]


def tenant_of(key: str) -> str | None:
    """The tenant a store key belongs to; None for a key made without tenancy."""
    tenant, separator, _ = key.rpartition(SEPARATOR)
    return tenant if separator else None
