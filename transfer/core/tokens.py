"""Named credentials (the `--tokens-file`): pure parsing, rendering and lookup.

The file is one JSON document, written by `transfer token` (0600, atomically):

    {"format": "transfer-tokens", "version": 1, "credentials": [
      {"name": "cam-1", "tenant": "lab", "scopes": ["read", "upload"],
       "sha256": "<64 hex digits>", "created": "2026-11-30T12:00:00Z"}]}

Invariants:
- The file holds a token's SHA-256 only, never the token. Tokens are 256 random bits
  (`new_token`), so a fast unsalted hash is enough: nobody can search 2^256 inputs for
  one that hashes to a stolen digest, which is what salts and slow hashes (made for
  low-entropy passwords) defend against (docs/security.md).
- Names are unique; a table that breaks a rule is refused whole (`ConfigError`), never
  half-loaded.
- `lookup` compares digests, not tokens: the time it takes depends on the digest of the
  guess, which an attacker cannot steer towards a stored one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from transfer.core.errors import ConfigError
from transfer.core.tenancy import Scope, parse_scopes, validate_tenant

FORMAT, VERSION = "transfer-tokens", 1
TOKEN_PREFIX = "tt_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def new_token() -> str:
    """A fresh token: `tt_` and 256 random bits, URL-safe base64 (46 characters)."""
    raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=")
    return TOKEN_PREFIX + raw.decode()


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def validate_name(name: str) -> str:
    """Raises:
    ConfigError: not 1-64 characters of [A-Za-z0-9_.-] starting with a letter or digit.
    """
    if not _NAME.fullmatch(name):
        raise ConfigError(f"bad credential name {name!r}: 1-64 characters of [A-Za-z0-9_.-]")
    return name


@dataclass(frozen=True, slots=True)
class Credential:
    name: str
    tenant: str
    scopes: frozenset[Scope]
    sha256: str  # hex digest of the token
    created: str = ""  # RFC 3339 UTC, informational

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "tenant": self.tenant,
            "scopes": sorted(self.scopes),
            "sha256": self.sha256,
            "created": self.created,
        }


@dataclass(frozen=True, slots=True)
class TokenTable:
    """The credentials of one tokens file, by name and by digest."""

    credentials: tuple[Credential, ...] = ()
    _by_digest: dict[str, Credential] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [c.name for c in self.credentials]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"duplicate credential name {duplicates[0]!r}")
        object.__setattr__(self, "_by_digest", {c.sha256: c for c in self.credentials})

    def lookup(self, token: str) -> Credential | None:
        return self._by_digest.get(digest_of(token))

    def added(self, credential: Credential) -> TokenTable:
        """Raises:
        ConfigError: the name is taken."""
        if any(c.name == credential.name for c in self.credentials):
            raise ConfigError(f"a credential named {credential.name!r} exists already")
        return TokenTable((*self.credentials, credential))

    def revoked(self, name: str) -> TokenTable:
        """Raises:
        ConfigError: no credential has that name."""
        kept = tuple(c for c in self.credentials if c.name != name)
        if len(kept) == len(self.credentials):
            raise ConfigError(f"no credential named {name!r}")
        return TokenTable(kept)


def render(table: TokenTable) -> bytes:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "credentials": [c.to_json() for c in table.credentials],
    }
    return (json.dumps(doc, indent=1) + "\n").encode()


def parse(data: bytes) -> TokenTable:
    """A tokens file's bytes as a table.

    Raises:
        ConfigError: not a tokens file, or one entry breaks a rule (the message says which).
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"not a tokens file (bad JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError("not a tokens file (no 'format': 'transfer-tokens')")
    if doc.get("version") != VERSION:
        raise ConfigError(f"tokens file version {doc.get('version')!r} is not {VERSION}")
    entries = doc.get("credentials")
    if not isinstance(entries, list):
        raise ConfigError("tokens file: 'credentials' must be a list")
    return TokenTable(tuple(_credential(entry) for entry in entries))


def _credential(entry: object) -> Credential:
    if not isinstance(entry, dict):
        raise ConfigError("tokens file: every credential must be an object")
    try:
        name, tenant, digest = entry["name"], entry["tenant"], entry["sha256"]
        scopes = entry["scopes"]
    except KeyError as exc:
        raise ConfigError(f"tokens file: a credential lacks {exc.args[0]!r}") from None
    if not all(isinstance(v, str) for v in (name, tenant, digest)) or not _strings(scopes):
        raise ConfigError("tokens file: name, tenant, sha256 must be strings, scopes a list")
    if not _HEX64.fullmatch(digest):
        raise ConfigError(f"tokens file: credential {name!r} has a bad sha256")
    return Credential(
        validate_name(name),
        validate_tenant(tenant),
        parse_scopes(scopes),
        digest,
        str(entry.get("created", "")),
    )


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def scopes_text(scopes: Iterable[Scope]) -> str:
    return ",".join(sorted(scopes))
