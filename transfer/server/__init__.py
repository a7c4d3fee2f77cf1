"""The receiving HTTP server: `make_app` and one module per protocol front-end.

Owns: the aiohttp application (`app`), the native GCS-style front-end (`native`,
`views`), admission, middleware, authentication, connection limits and the expiry
sweep. Handlers speak HTTP and ask the store; they never touch the file system.

May import: core, common, store. Never imports: sender, cli, testing.
"""
