"""Plumbing shared by the store, the server and the sender, below all of them.

Owns: durable file-system steps (`fsutil`), the Prometheus registry (`metrics`), TLS
contexts (`tls`) and the one HTTP client session factory (`http`).

May import: `transfer.core`. Never imports: store, server, sender, cli, testing.
"""
