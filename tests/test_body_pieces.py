"""A body of known length is read one received piece at a time (`body._read_some`:
`readchunk` instead of `readany`'s join, issue 13), a chunked one (`Transfer-Encoding:
chunked`) joined as before: both arrive whole, in one request or across two. Real
in-process servers on `FileStore`."""

from __future__ import annotations

import pytest
from conftest import Served, chunks_of, content_range, digest_field

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("piece", [1, 3, 4096])
async def test_a_chunked_body_arrives_whole(served: Served, piece: int) -> None:
    data = bytes(range(256)) * 64  # 16 KiB: thousands of HTTP chunks at piece=1..3
    response = await served.client.put(
        "/uploads/chunked",
        data=chunks_of(data, piece),
        headers={
            "Content-Range": content_range(0, data, len(data)),
            "Content-Digest": digest_field(data),
        },
    )
    assert response.status == 200, await response.text()
    assert (served.files_dir / "chunked").read_bytes() == data


async def test_a_chunked_chunk_of_a_larger_upload_resumes_at_its_end(served: Served) -> None:
    data = b"0123456789" * 1000
    first, rest = data[:4000], data[4000:]
    headers = {"Content-Range": content_range(0, first, len(data))}
    response = await served.client.put(
        "/uploads/two", data=chunks_of(first, 7), headers=headers, allow_redirects=False
    )
    assert response.status == 308
    assert response.headers["Range"] == "bytes=0-3999"
    headers = {"Content-Range": content_range(4000, rest, len(data))}
    response = await served.client.put("/uploads/two", data=chunks_of(rest, 5), headers=headers)
    assert response.status == 200
    assert (served.files_dir / "two").read_bytes() == data


async def test_a_plain_body_arrives_whole(served: Served) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB in several socket reads
    headers = {"Content-Range": content_range(0, data, len(data))}
    response = await served.client.put("/uploads/plain", data=data, headers=headers)
    assert response.status == 200
    assert (served.files_dir / "plain").read_bytes() == data
