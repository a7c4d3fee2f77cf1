"""The pure rules of `transfer`: no I/O, no event loop, no logging configuration.

Owns: Content-Range and chunk planning (`protocol`), digests and their RFC 9530 form
(`integrity`), human units (`units`), the upload values (`records`), the lifecycles as
transition tables (`lifecycle`), the error tree with its one registry of codes
(`errors`) and the registry of log event names (`events`).

Never imports: asyncio, aiohttp, os, pathlib, structlog, or any other `transfer`
package (enforced by the import-linter contracts in pyproject.toml).
"""
