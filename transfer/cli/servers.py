"""`--server` for the sender's subcommands: checking one or several, the protocol client
for each (behind one `FailoverClient`, docs/scaling.md "Client-side fail-over"), and how
`transfer verify` names a file's upload on the server.

Wiring only: the fail-over policy is `transfer.sender.failover`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from transfer.cli.common import check_server_url
from transfer.core.errors import ConfigError
from transfer.sender.client import Client, Corruptor, Progress, UploadClient
from transfer.sender.failover import FailoverClient, Servers
from transfer.sender.ietfclient import IetfClient
from transfer.sender.journal import JournalEntry
from transfer.sender.tusclient import TusClient


def check_servers(servers: list[str], check: Callable[[str], None]) -> None:
    """Each --server checked alone (`check`); one given twice is a mistake too.

    Raises:
        ConfigError: naming the first bad or repeated --server.
    """
    for number, url in enumerate(servers):
        check(url)
        if url.rstrip("/") in (u.rstrip("/") for u in servers[:number]):
            raise ConfigError(f"--server {url} is given twice")


def check_protocol(protocol: str, server: str) -> None:
    """Raises ConfigError for a --server the protocol cannot use."""
    if protocol == "native":
        check_server_url(server)
    elif urlsplit(server).scheme not in ("http", "https") or not urlsplit(server).netloc:
        raise ConfigError(f"--server must be an http:// or https:// URL, not {server!r}")


def client_for(
    args: argparse.Namespace, session: aiohttp.ClientSession, seed: int, servers: Servers
) -> FailoverClient:
    """The `Client` of --protocol for each --server, behind one `FailoverClient` (with the
    --inject-corruption demo when asked: one corruptor, so one seeded sequence)."""
    corruptor = Corruptor(args.inject_corruption, seed) if args.inject_corruption else None
    return FailoverClient(
        servers, [_client_of(args.protocol, session, url, corruptor) for url in servers.urls]
    )


def _client_of(
    protocol: str, session: aiohttp.ClientSession, server: str, corruptor: Corruptor | None
) -> Client:
    if protocol == "tus":
        return TusClient(session, tus_endpoint(server, "/tus/"), corruptor=corruptor)
    if protocol == "ietf":
        return IetfClient(session, tus_endpoint(server, "/resumable/"), corruptor=corruptor)
    return UploadClient(session, server, corruptor=corruptor)


def tus_endpoint(server: str, default: str = "/tus/") -> str:
    """The creation URL of tus or IETF: --server itself when it has a path, else
    `{server}{default}` (`transfer serve`'s --tus-path /tus/, --ietf-path /resumable/)."""
    if urlsplit(server).path.strip("/"):
        return server
    return server.rstrip("/") + default


async def record_at(clients: list[UploadClient], upload_id: str, index: int) -> Progress:
    return await clients[index].record(upload_id)


def upload_id_of(entry: JournalEntry) -> str:
    """The server's id of the file's upload: the journaled URL's last segment where the
    server named it (tus, IETF), else the file id (native)."""
    if entry.upload_url is None:
        return entry.file_id
    return entry.upload_url.rstrip("/").rsplit("/", 1)[-1]
