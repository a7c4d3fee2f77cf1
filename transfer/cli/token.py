"""`transfer token add|list|revoke --tokens-file PATH`: manage `transfer serve`'s
named credentials (format and rules: `core/tokens.py`; docs/security.md).

`add` prints the new token once, on stdout, and never again: the file keeps its SHA-256
only. Every mistake (duplicate or unknown name, bad tenant or scope, unreadable or
corrupt file) is one line on stderr and exit 2, with the file left as it was.
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

from transfer.common import tokenfile
from transfer.core.tenancy import DEFAULT_SCOPES, parse_scopes, validate_tenant
from transfer.core.tokens import Credential, digest_of, new_token, scopes_text, validate_name

# Any: the subparsers are the CLI's own ArgumentParser subclass.
Sub: TypeAlias = "argparse._SubParsersAction[Any]"


def add_parser(sub: Sub, add_logging: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("token", help="manage named credentials for serve --tokens-file")
    actions: Sub = p.add_subparsers(dest="token_command", required=True)
    add = actions.add_parser("add", help="create a credential; prints its token once")
    add.add_argument("name", help="the credential's name (1-64 of [A-Za-z0-9_.-])")
    add.add_argument("--tenant", required=True, help="its tenant (1-32 of [a-z0-9_-])")
    add.add_argument(
        "--scope",
        action="append",
        metavar="SCOPE",
        help="upload, read, delete or admin (repeatable; default: upload and read)",
    )
    add.set_defaults(run=_add)
    listing = actions.add_parser("list", help="show the credentials (never a token)")
    listing.set_defaults(run=_list)
    revoke = actions.add_parser("revoke", help="remove a credential (serve: send SIGHUP)")
    revoke.add_argument("name", help="the credential's name")
    revoke.set_defaults(run=_revoke)
    for each in (add, listing, revoke):
        each.add_argument(
            "--tokens-file", type=Path, required=True, help="the file serve --tokens-file reads"
        )
        add_logging(each)


def _add(args: argparse.Namespace) -> int:
    name, tenant = validate_name(args.name), validate_tenant(args.tenant)
    scopes = parse_scopes(args.scope) if args.scope else DEFAULT_SCOPES
    token = new_token()
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    credential = Credential(name, tenant, scopes, digest_of(token), created)
    with tokenfile.editing(args.tokens_file):
        table = tokenfile.load(args.tokens_file, missing_ok=True)
        tokenfile.save(args.tokens_file, table.added(credential))
    print(token)
    return 0


def _list(args: argparse.Namespace) -> int:
    for c in tokenfile.load(args.tokens_file).credentials:
        print(f"{c.name}\ttenant={c.tenant}\tscopes={scopes_text(c.scopes)}\tcreated={c.created}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with tokenfile.editing(args.tokens_file):
        table = tokenfile.load(args.tokens_file)
        tokenfile.save(args.tokens_file, table.revoked(args.name))
    return 0
