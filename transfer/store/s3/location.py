"""Where a store lives, from `transfer serve --store URL`: pure parsing, no clients.

    file://PATH               the local `FileStore` (the same as `--data-dir PATH`)
    s3://BUCKET/PREFIX        the S3 + PostgreSQL store (with `--s3-endpoint`, `--db`)

Invariants: a parsed `S3Location` has a bucket name S3 accepts and a prefix with no
leading or trailing slash (possibly empty); keys are built only by `key`, so every
object of the store sits under `PREFIX/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from transfer.core.errors import ConfigError

# S3's bucket naming rules (3-63 characters, lower-case letters, digits, dots, hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str = ""

    def key(self, *parts: str) -> str:
        """`PREFIX/part/part...` (no leading slash when the prefix is empty)."""
        return "/".join(p for p in (self.prefix, *parts) if p)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_store(url: str) -> Path | S3Location:
    """A `file://PATH` as a `Path`, an `s3://BUCKET/PREFIX` as an `S3Location`.

    Raises:
        ConfigError: any other scheme, an empty path, or a bucket name S3 refuses.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        if not path:
            raise ConfigError(f"--store {url}: file:// needs a path, e.g. file:///var/lib/transfer")
        return Path(path)
    if parts.scheme == "s3":
        if not _BUCKET.fullmatch(parts.netloc):
            raise ConfigError(f"--store {url}: {parts.netloc!r} is not a valid S3 bucket name")
        if parts.query or parts.fragment:
            raise ConfigError(f"--store {url}: an s3:// URL takes no query or fragment")
        return S3Location(parts.netloc, parts.path.strip("/"))
    raise ConfigError(f"--store {url}: expected file://PATH or s3://BUCKET/PREFIX")


def check_db_url(url: str) -> str:
    """Raises: ConfigError unless `url` is a postgresql:// (or postgres://) URL."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError:  # an unbalanced [ in the host, say
        scheme = ""
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"--db {redact_dsn(url)}: expected postgresql://...")
    return url


def redact_dsn(dsn: str) -> str:
    """`dsn` with its password (in the authority or a `password=` parameter) as `***`,
    for logs and errors; one that cannot be parsed is not shown at all."""
    try:
        parts = urlsplit(dsn)
        password = parts.password
    except ValueError:
        return "(an unparseable URL)"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not password and not any(k == "password" for k, _ in query):
        return dsn
    netloc = parts.netloc
    if password:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = [(k, "***" if k == "password" else v) for k, v in query]
    rest = urlunsplit(parts._replace(scheme="", netloc="", query=urlencode(query, safe="*/")))
    return f"{parts.scheme}://{netloc}{rest}"


def check_endpoint(url: str) -> str:
    """Raises: ConfigError unless `url` is an http(s):// URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--s3-endpoint {url}: expected http(s)://HOST[:PORT]")
    return url


__all__ = ["S3Location", "check_db_url", "check_endpoint", "parse_store", "redact_dsn"]
