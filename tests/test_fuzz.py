"""Fuzzing whole requests against one running server, and (with atheris) the parsers.

The Content-Range and digest parsers have their own Hypothesis properties in
`test_protocol.py` and `test_integrity.py`. Here Hypothesis builds whole HTTP/1.1
requests (random methods, paths with traversal, unicode and percent-encoding, headers
from a list, bodies) and sends each as raw bytes on a fresh connection to one in-process
server, which runs with a token and small limits on its own event loop in a thread.

Invariants, after every request:
- the status is never 5xx, except 503 and 507;
- a refusal with a body is `application/problem+json` with a `code`, except aiohttp's
  own plain-text 400s for malformed HTTP, sent before any handler runs (collected in
  `FuzzServer.low_level`). Those seen: "Invalid header value char" (a control character
  such as DEL in a header value) and "Invalid char in url path" (raw non-ASCII bytes in
  the request target);
- without the token, nothing but `/healthz` and `/metrics` answers anything but 401;
- the data dir holds only `uploads/{id}.json|.part` and `files/{id}` with valid ids, and
  nothing appears beside it;
- no upload the request did not name changes (bytes of every file compared), and the
  completed reference upload never changes at all.

Run as a script (`python tests/test_fuzz.py -runs=1000000 -max_len=256 CORPUS_DIR`), it
is an atheris (libFuzzer) harness over the pure parsers (`TRANSFER_FUZZ_PARSER=NAME` for
one of them); `test_atheris_over_the_parsers` runs it briefly, per parser, with a fixed
seed. It found `parse_upload_metadata` letting a `ValueError` escape (now a 400).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import importlib
import inspect
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import pytest
import xxhash
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from transfer.core import integrity, protocol
from transfer.core.errors import ProtocolError
from transfer.server.app import ServerConfig, make_app
from transfer.store.filestore import FileStore
from transfer.store.recordtree import shard_of

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"
KiB = 1024
TOKEN = "fuzz-token-0123456789abcdef"
OPEN_PATHS = ("/healthz", "/metrics")
EXAMPLES = int(os.environ.get("TRANSFER_FUZZ_EXAMPLES", "200"))  # more for a long hunt
VALID_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
PARTIAL_ID, DONE_ID = "ref-partial", "ref-done"
PARTIAL_BYTES = bytes(range(256)) * 4  # 1024 of a 4096-byte upload
DONE_BYTES = b"complete and published " * 50


# --- the server, on its own loop in a thread -----------------------------------------


@dataclass
class FuzzServer:
    data_dir: Path
    port: int = 0
    low_level: list[tuple[bytes, bytes]] = field(default_factory=list)  # aiohttp's own 400s
    ready: threading.Event = field(default_factory=threading.Event)
    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event | None = None

    def exchange(self, request: bytes, method: str) -> Answer:
        """Send raw `request` on a fresh connection; the whole answer."""
        with socket.create_connection((HOST, self.port), timeout=10) as sock:
            sock.sendall(request)
            response = http.client.HTTPResponse(sock, method=method)
            response.begin()
            body = response.read()
            return Answer(response.status, response.getheader("Content-Type", ""), body)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def _serve(server: FuzzServer) -> None:
    async def main() -> None:
        server.loop, server.stop = asyncio.get_running_loop(), asyncio.Event()
        store = FileStore(server.data_dir, durable=False)  # durability is not under test
        store.open()
        config = ServerConfig(
            token=TOKEN,
            idle_timeout=0.5,
            max_chunk=64 * KiB,
            max_upload=256 * KiB,
            max_partial=4 * 1024 * KiB,
            reserve=0,
        )
        runner = web.AppRunner(make_app(store, config))
        await runner.setup()
        await web.TCPSite(runner, HOST, 0).start()
        server.port = runner.addresses[0][1]
        server.ready.set()
        await server.stop.wait()
        await runner.cleanup()

    asyncio.run(main())


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    server = FuzzServer(tmp_path_factory.mktemp("fuzz") / "data")
    thread = threading.Thread(target=_serve, args=(server,), daemon=True)
    thread.start()
    assert server.ready.wait(10), "the fuzz server did not start"
    _reference_uploads(server)
    yield server
    assert server.loop is not None and server.stop is not None
    server.loop.call_soon_threadsafe(server.stop.set)
    thread.join(10)


def _request(
    method: str, path: str, headers: dict[str, str], body: bytes = b"", *, chunked: bool = False
) -> bytes:
    """A well-framed HTTP/1.1 request (whatever its contents), closing the connection."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        pieces = [body[i : i + 700] for i in range(0, len(body), 700)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _reference_uploads(server: FuzzServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    rng = {"Content-Range": f"bytes 0-{len(PARTIAL_BYTES) - 1}/4096"}
    partial = _request("PUT", f"/uploads/{PARTIAL_ID}", {**auth, **rng}, PARTIAL_BYTES)
    assert server.exchange(partial, "PUT").status == 308
    done = _request("PUT", f"/uploads/{DONE_ID}", auth, DONE_BYTES)
    assert server.exchange(done, "PUT").status == 200


# --- request strategies --------------------------------------------------------------

# Valid ids the fuzzer keeps coming back to, so uploads build up state across examples.
KNOWN_IDS = [PARTIAL_ID, DONE_ID, "f0", "f1", "f2", "f3"]
ODD_IDS = [
    "x" * 64, "x" * 65, "", ".", "..", "...", "%2e%2e", "..%2F..%2Fetc%2Fpasswd", "..%5C..",
    "%00", "a%00b", "ünïcode", "%C3%BC", "%ff", "%zz", "a;b", "a%2Fb", "CON", ".hidden", "-",
    "ref-partial%20", "%2F", "f0%2F..%2Fref-done",
]  # fmt: skip
ODD_PATHS = [
    "/uploads", "/uploads/", "/uploads/{}", "/files/{}", "/uploads/{}/more", "//uploads/{}",
    "/{}", "/uploads/../files/{}", "/files/..%2Fuploads%2F{}", "/healthz", "/metrics",
    "/%68ealthz", "/healthz/", "/uploads/{}?uploadType=resumable", "/uploads/{}#frag",
]  # fmt: skip
METHODS = ["PUT"] * 4 + ["POST"] * 2 + ["HEAD", "GET", "DELETE", "PATCH", "OPTIONS"]

T = TypeVar("T")


def mostly(usual: st.SearchStrategy[T], rare: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`usual` about four times in five, else `rare` (`|` would pick each half the time)."""
    return st.integers(0, 4).flatmap(lambda n: rare if n == 0 else usual)


known_ids = st.sampled_from(KNOWN_IDS)
odd_segments = st.sampled_from(KNOWN_IDS + ODD_IDS) | st.text(max_size=12).map(
    lambda s: quote(s, safe="%/.;")
)


@st.composite
def paths(draw: st.DrawFn, method: str) -> str:
    if draw(st.integers(0, 9)) < 3:  # anything, often nonsense
        return draw(st.sampled_from(ODD_PATHS)).format(draw(odd_segments))
    if method == "POST":
        return draw(st.sampled_from(["/uploads", "/uploads?uploadType=resumable"]))
    if method in ("GET", "HEAD") and draw(st.booleans()):
        return f"/files/{draw(known_ids)}"
    return f"/uploads/{draw(known_ids)}"


def _digest(data: bytes, algorithm: str = "xxh3-128") -> str:
    raw = xxhash.xxh3_128_digest(data) if algorithm == "xxh3-128" else b"\0" * 32
    return f"{algorithm}=:{base64.b64encode(raw).decode()}:"


numbers = st.integers(min_value=0, max_value=5000) | st.sampled_from([2**53, 10**17, 256 * KiB])
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)


@st.composite
def content_ranges(draw: st.DrawFn, body: bytes) -> str:
    start = draw(mostly(st.just(0), numbers))  # 0 fits any upload whose offset <= len(body)
    end = start + len(body) - 1
    total = draw(st.sampled_from(["*", str(end + 1)]) | numbers.map(str))
    forms = [
        f"bytes {start}-{end}/{total}",
        f"bytes {start}-{end}/{total}",
        f"bytes */{total}",
        "bytes */*",
        f"bytes {start}-{draw(numbers)}/{total}",
        draw(header_text),
    ]
    return draw(st.sampled_from(forms))


upload_metadata = st.builds(
    protocol.format_upload_metadata,
    st.none() | st.text(max_size=20),
    st.dictionaries(st.sampled_from(["owner", "kind", "name", "a b", ""]), st.text(max_size=8)),
)


@st.composite
def headers(draw: st.DrawFn, method: str, body: bytes) -> dict[str, str]:
    choices = {
        "Content-Range": content_ranges(body),
        "Content-Digest": mostly(
            st.sampled_from([_digest(body), _digest(body), _digest(b"other"), "sha-256=:AA==:"]),
            header_text,
        ),
        "Repr-Digest": mostly(
            st.sampled_from([_digest(body), _digest(body, "sha-256"), "md5=:x:"]), header_text
        ),
        "X-Upload-Content-Length": mostly(numbers.map(str), header_text),
        "Content-Type": mostly(
            st.sampled_from(["application/json", "application/octet-stream", "text/plain", ""]),
            header_text,
        ),
        "Range": mostly(
            st.sampled_from(["bytes=0-9", "bytes=-5", "bytes=99999-", "bytes=0-1,3-4"]),
            header_text,
        ),
        "If-None-Match": mostly(st.just("*"), header_text),
        "Upload-Metadata": mostly(upload_metadata, header_text),
    }
    names = draw(st.sets(st.sampled_from(sorted(choices)), max_size=4))
    if method == "PUT" and draw(st.integers(0, 9)) < 7:
        names.add("Content-Range")
    return {name: draw(choices[name]) for name in sorted(names)}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | known_ids,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=4,
)
creation_docs = st.fixed_dictionaries(
    {},
    optional={
        "id": known_ids | st.sampled_from(ODD_IDS) | json_values,
        "name": st.text(max_size=30) | json_values,
        "size": numbers | json_values,
        "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8)) | json_values,
    },
)
json_bodies = creation_docs.map(lambda d: json.dumps(d).encode()) | json_values.map(
    lambda v: json.dumps(v).encode()
)
any_bodies = st.binary(max_size=2 * KiB) | json_bodies


def bodies(method: str) -> st.SearchStrategy[bytes]:
    if method == "PUT":
        return st.binary(min_size=1, max_size=2 * KiB) | any_bodies
    if method == "POST":
        return json_bodies | any_bodies
    return st.just(b"") | any_bodies


AUTHORIZATIONS = [
    (f"Bearer {TOKEN}", True),
    (f"bearer {TOKEN}", True),
    (None, False),
    ("Bearer wrong", False),
    (f"Basic {TOKEN}", False),
    (f"Bearer {TOKEN}x", False),
    (f"Bearer {TOKEN[:-1]}", False),
]
authorizations = mostly(
    st.just(AUTHORIZATIONS[0]),
    st.sampled_from(AUTHORIZATIONS) | header_text.map(lambda text: (text, False)),
)


@dataclass(frozen=True, slots=True)
class Fuzzed:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    authorized: bool
    chunked: bool = False  # Transfer-Encoding: chunked instead of Content-Length

    def raw(self) -> bytes:
        return _request(self.method, self.path, self.headers, self.body, chunked=self.chunked)

    def names(self, upload_id: str) -> bool:
        """Whether this request could address `upload_id` (its path or body mentions it)."""
        return upload_id in unquote(self.path) or upload_id.encode() in self.body


@st.composite
def requests(draw: st.DrawFn) -> Fuzzed:
    method = draw(st.sampled_from(METHODS))
    path = draw(paths(method))
    body = draw(bodies(method))
    fields = draw(headers(method, body))
    authorization, authorized = draw(authorizations)
    if authorization is not None:
        fields["Authorization"] = authorization
    chunked = method in ("PUT", "POST") and draw(st.integers(0, 4)) == 0
    return Fuzzed(method, path, fields, body, authorized, chunked)


# --- invariants ----------------------------------------------------------------------


def _snapshot(data_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(data_dir)): p.read_bytes() for p in data_dir.rglob("*") if p.is_file()
    }


def _owner(relative: str) -> str:
    """The upload id a data-dir file belongs to."""
    return Path(relative).name.split(".")[0]


def _check_layout(data_dir: Path, snapshot: dict[str, bytes]) -> None:
    assert [p.name for p in data_dir.parent.iterdir()] == [data_dir.name]
    assert {p.name for p in data_dir.iterdir()} == {"uploads", "records", "files"}
    for relative in snapshot:
        folder, *shard, name = relative.split("/")
        if folder == "records":  # records/ab/cd/{id}.json, ab/cd a hash of the id
            stem = name.removesuffix(".json")
            assert tuple(shard) == shard_of(stem) and VALID_ID.fullmatch(stem), relative
        elif folder == "uploads":
            stem, dot, suffix = name.rpartition(".")
            assert dot and suffix in ("json", "part") and VALID_ID.fullmatch(stem), relative
        else:
            assert folder == "files" and not shard and VALID_ID.fullmatch(name), relative


def _check_others_unchanged(
    sent: Fuzzed, before: dict[str, bytes], after: dict[str, bytes]
) -> None:
    existed = {_owner(r) for r in before}
    for relative in before.keys() | after.keys():
        if before.get(relative) == after.get(relative):
            continue
        owner = _owner(relative)
        assert owner != DONE_ID, f"the completed reference upload changed: {relative}"
        if owner in existed:
            assert sent.names(owner), f"{relative} changed by a request not naming it"
        else:  # created: by naming it, or by a POST that let the server pick an id
            assert sent.names(owner) or sent.method == "POST", f"{relative} appeared"


def _code(answer: Answer) -> str:
    if not answer.body or not answer.content_type.startswith("application/problem+json"):
        return answer.content_type.split(";")[0]
    return str(json.loads(answer.body).get("code"))


def _check_answer(server: FuzzServer, sent: Fuzzed, answer: Answer) -> None:
    status, body, content_type = answer.status, answer.body, answer.content_type
    assert status < 500 or status in (503, 507), (status, body)
    if status == 400 and content_type.startswith("text/plain"):
        server.low_level.append((sent.raw()[:200], body[:200]))  # aiohttp's parser refused
        return
    if status >= 400 and body:
        assert content_type.startswith("application/problem+json"), (status, body[:200])
        assert isinstance(json.loads(body)["code"], str)
    path = urlsplit(sent.path).path
    if not sent.authorized and unquote(path) not in OPEN_PATHS:
        assert status == 401, (status, body[:200])


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(sent=requests())
def test_random_requests_cannot_hurt_the_server(fuzz_server: FuzzServer, sent: Fuzzed) -> None:
    data_dir = fuzz_server.data_dir
    before = _snapshot(data_dir)
    answer = fuzz_server.exchange(sent.raw(), sent.method)
    event(f"{sent.method} {answer.status} {_code(answer)}")  # --hypothesis-show-statistics
    after = _snapshot(data_dir)
    _check_answer(fuzz_server, sent, answer)
    _check_layout(data_dir, after)
    _check_others_unchanged(sent, before, after)
    assert after[f"files/{DONE_ID}"] == DONE_BYTES


def test_after_the_fuzzing_the_server_is_healthy(fuzz_server: FuzzServer) -> None:
    answer = fuzz_server.exchange(_request("GET", "/healthz", {}), "GET")
    assert answer.status == 200
    assert (fuzz_server.data_dir / "files" / DONE_ID).read_bytes() == DONE_BYTES
    _check_layout(fuzz_server.data_dir, _snapshot(fuzz_server.data_dir))


# --- atheris over the pure parsers ---------------------------------------------------


def _content_range(text: str) -> None:
    rng = protocol.parse_content_range(text)
    assert protocol.parse_content_range(protocol.format_content_range(rng)) == rng


def _digest_field(text: str) -> None:
    digests = integrity.parse_digest_field(text)
    if digests:
        assert integrity.parse_digest_field(integrity.format_digest_field(digests)) == digests


def _range_reply(text: str) -> None:
    protocol.parse_range_reply(text or None)


def _upload_metadata(text: str) -> None:
    name, metadata = protocol.parse_upload_metadata(text)
    header = protocol.format_upload_metadata(name, metadata)
    assert protocol.parse_upload_metadata(header) == (name, metadata)


def _creation(text: str) -> None:
    try:
        doc: Any = json.loads(text)
    except ValueError:
        return
    protocol.parse_creation(doc, None)


# Each parser returns a value (which formats and parses back to itself) or raises a
# `ProtocolError`; anything else escaping is a bug (a 500 when a request carries it).
PARSERS: dict[str, Callable[[str], None]] = {
    "content-range": _content_range,
    "digest": _digest_field,
    "range-reply": _range_reply,
    "upload-metadata": _upload_metadata,
    "creation": _creation,
}
SEEDS = {
    "content-range": ["bytes 0-9/10", "bytes */*", "bytes 5-9/*", "bytes */1024"],
    "digest": ["xxh3-128=:AAAAAAAAAAAAAAAAAAAAAA==:", "sha-256=:x:, md5=:AA==:;p=1"],
    "range-reply": ["bytes=0-99"],
    "upload-metadata": ["name Zm94LnR4dA==,owner b3Bz"],
    "creation": ['{"id": "a", "size": 3, "metadata": {"k": "v"}}'],
}
_ONLY = os.environ.get("TRANSFER_FUZZ_PARSER")  # one parser; else the first byte picks


def _one_input(data: bytes) -> None:
    """One libFuzzer input: the first byte picks a parser (unless one was fixed), the
    rest, read as latin-1, is its text."""
    if not data:
        return
    name = _ONLY or sorted(PARSERS)[data[0] % len(PARSERS)]
    with contextlib.suppress(ProtocolError):
        PARSERS[name](data[1:].decode("latin-1"))


ATHERIS_RUNS = 30000


@pytest.mark.parametrize(
    "parser",
    sorted(PARSERS),
)
def test_atheris_over_the_parsers(tmp_path: Path, parser: str) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS[parser]):
        (corpus / f"seed{i}").write_bytes(b"\0" + seed.encode())
    command = [sys.executable, __file__, f"-runs={ATHERIS_RUNS}", "-max_len=256", "-seed=1"]
    done = subprocess.run(
        [*command, str(corpus)],
        cwd=tmp_path,
        env={**os.environ, "TRANSFER_FUZZ_PARSER": parser},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"Done {ATHERIS_RUNS} runs" in done.stderr


def test_non_ascii_upload_metadata_is_refused_not_a_crash(fuzz_server: FuzzServer) -> None:
    """Found by atheris: a non-ASCII `Upload-Metadata` value once escaped as a 500."""
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Range": "bytes 0-2/3"}
    request = _request("PUT", "/uploads/meta-1", {**auth, "Upload-Metadata": "name é"}, b"abc")
    answer = fuzz_server.exchange(request, "PUT")
    assert (answer.status, _code(answer)) == (400, "invalid_metadata")


def _atheris_main() -> None:
    atheris = importlib.import_module("atheris")
    # Coverage feedback from the parsers' own modules only: instrumenting everything this
    # file imports (aiohttp, hypothesis, ...) takes minutes.
    atheris.enabled_hooks.add("RegEx")  # let libFuzzer see what the patterns compare
    for function in (_one_input, *PARSERS.values()):
        atheris.instrument_func(function)
    for module in (protocol, integrity):
        for value in vars(module).values():
            if inspect.isfunction(value) and value.__module__ == module.__name__:
                atheris.instrument_func(value)
    atheris.Setup(sys.argv, _one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    _atheris_main()
