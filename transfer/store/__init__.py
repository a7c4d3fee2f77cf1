"""Where upload bytes and records live, behind the `UploadStore` seam.

Owns: the seam (small protocols), `FileStore` (local disk, the embedded default) and
`MemoryStore` (for fast handler tests). Every store passes the conformance suite in
tests/store_conformance.py.

May import: `transfer.core`, `transfer.common`. Never imports: aiohttp, server,
sender, cli, testing.
"""
