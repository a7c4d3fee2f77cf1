"""The sending side: generate or take files, journal them, upload them, resume them.

Owns: the generator, the spool and journal, the HTTP client and its retry policy, the
uploader, the pipeline that ties them together, and the sender's status server.

May import: core, common. Never imports: store, server, cli, testing.
"""
