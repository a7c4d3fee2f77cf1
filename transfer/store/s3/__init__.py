"""The S3 + PostgreSQL store: bytes in an S3-compatible object store, upload records in
PostgreSQL, so several `transfer serve` replicas can share uploads (docs/scaling.md).

    location   where it is: parse `--store` URLs (pure; imports neither client)
    records    the PostgreSQL side: schema migrations, rows, per-upload locks, compare-and-set
    failures   what an S3 or PostgreSQL failure becomes: 503 while away, else 500
    objects    the S3 side: objects, multipart uploads, listings; errors become StorageFailure
    intake     one chunk taken in: whole parts uploaded as they fill, the rest kept as a tail
    store      `S3Store`, the `ServerStore` over both, and `S3Backend`, the open connections
    sweep      removing multipart uploads and tail objects that no record owns

Only `location` may be imported without the `s3` extra (aiobotocore, asyncpg): the CLI
imports the rest lazily, when `--store s3://` is given.
"""
