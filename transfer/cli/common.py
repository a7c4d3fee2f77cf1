"""What `serve` and `send` share: the bearer token flag and its environment variable."""

from __future__ import annotations

import argparse
import os

TOKEN_ENV = "TRANSFER_TOKEN"


def add_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token", default=None, help=f"bearer token (prefer ${TOKEN_ENV}: flags show in ps)"
    )


def token_of(args: argparse.Namespace) -> str | None:
    """`--token`, else `$TRANSFER_TOKEN`, else None; an empty value means none."""
    token = getattr(args, "token", None)
    if token is None:
        token = os.environ.get(TOKEN_ENV)
    return token or None
