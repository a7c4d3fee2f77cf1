"""The nginx configuration in front of the replicas (docs/scaling.md quotes it whole).

`cluster_conf` renders `CONF` for a directory, a listening port, the replicas' ports and
the largest request body. Every choice is commented in the template itself, so the
file nginx reads (DIR/nginx.conf) explains itself too. The rules it keeps:

- Bodies are streamed, never spooled (`proxy_request_buffering off`): a replica sees a
  chunk's bytes as they come, and a request whose body nginx has begun to forward can
  never be replayed to another replica.
- Requests on one upload go to one replica while it lives (`hash $upload_key
  consistent`, the key being the upload id read from the path), so they queue on that
  replica's per-upload lock instead of racing another replica for PostgreSQL's lock
  (which answers 409 `upload_conflict`), and the running hash stays in one memory.
- A request is passed to another replica only if it can be replayed (`error timeout`,
  never `non_idempotent`; with unbuffered bodies nginx cannot re-send a body it began
  to forward): what no replica saw, and idempotent requests without a body.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transfer.testing.harness import HOST
from transfer.testing.nginx import preamble, temp_paths

CONF = """\
{preamble}
events {{
    worker_connections 1024;
}}

http {{
{temp_paths}
    # One access line per request, with the replica that answered it (tests read it).
    log_format cluster '$remote_addr "$request" $status $body_bytes_sent '
                       'upstream=$upstream_addr upstream_status=$upstream_status '
                       'key=$upload_key';
    access_log {dir}/access.log cluster;

    # The upload id, from every path that names one: /uploads/ID (native), /files/ID
    # (downloads), /tus/ID (tus 1.0), /resumable/ID (IETF draft); query strings never
    # count. A request naming no upload (POST /uploads, a tus or IETF creation,
    # /metrics, /healthz) is spread by its random request id.
    map $uri $upload_key {{
        ~^/(?:uploads|files|tus|resumable)/(?<id>[A-Za-z0-9_-]+)/?$  $id;
        default                                                      $request_id;
    }}

    upstream replicas {{
        # Consistent (ketama) hashing on the upload id: one upload's requests meet on
        # one replica, and losing a replica moves only the uploads it held.
        hash $upload_key consistent;
        # max_fails=1: one failure marks a replica down for fail_timeout, restarted or
        # not; its uploads go to the next replica on the hash ring meanwhile. Short,
        # because while every replica is marked down nginx answers 502 at once (clients
        # retry it) even if some are back.
{servers}
        # Idle connections kept open to the replicas (needs HTTP/1.1 and no
        # "Connection: close", below).
        keepalive 32;
    }}

    server {{
        listen {host}:{port};

        # Chunks up to the replicas' --max-chunk (a POST body is at most 1 MiB).
        client_max_body_size {max_body};
        # Stream request bodies to the replica as they arrive: nothing spooled to disk,
        # the replica's own --idle-timeout and --min-rate judge the client, and a body
        # nginx began to forward can never be replayed elsewhere.
        proxy_request_buffering off;
        # Stream answers (GET /files/ID downloads) without buffering them either.
        proxy_buffering off;
        proxy_max_temp_file_size 0;

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        # The client's Host: replicas build Location from it, so it names nginx.
        proxy_set_header Host $http_host;
        # The client's address; replicas trust it from 127.0.0.1/32 (--trusted-proxy).
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;

        # A failed replica (connection refused or reset, no answer in time) passes the
        # request to the next one only if it can be replayed: never a POST or PATCH
        # that reached a replica (no "non_idempotent"), never a body nginx began to
        # forward (unbuffered: it is gone). What is replayed is what no replica saw,
        # and bodyless GET, HEAD, DELETE and PUT bytes */* queries: all idempotent. A
        # replica dying mid-chunk is a 502 to the client, which asks the offset (HEAD,
        # or PUT bytes */*) and resumes from what was acknowledged.
        proxy_next_upstream error timeout;
        proxy_next_upstream_tries {tries};
        proxy_connect_timeout 2s;
        # Longer than a replica's --idle-timeout, so the replica answers 408 first.
        proxy_send_timeout 120s;
        proxy_read_timeout 120s;

        location / {{
            proxy_pass http://replicas;
        }}
    }}
}}
"""

SERVER = "        server {host}:{port} max_fails=1 fail_timeout=2s;"


def cluster_conf(directory: Path, port: int, replicas: Sequence[int], max_body: int) -> str:
    """The configuration: nginx on `port`, in front of the replicas on `replicas` ports."""
    servers = "\n".join(SERVER.format(host=HOST, port=p) for p in replicas)
    return CONF.format(
        preamble=preamble(directory),
        temp_paths=temp_paths(directory),
        dir=directory,
        host=HOST,
        port=port,
        servers=servers,
        max_body=max_body,
        tries=len(replicas),
    )
