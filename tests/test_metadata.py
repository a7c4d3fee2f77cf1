"""`Upload-Metadata` (tus syntax) parsing and formatting: pure, so property-tested."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transfer.core.errors import BadRequest
from transfer.core.protocol import MAX_METADATA, format_upload_metadata, parse_upload_metadata

keys = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True).filter(lambda k: k != "name")
texts = st.text(min_size=0, max_size=40)


@given(
    name=st.none() | st.text(min_size=1, max_size=100),
    metadata=st.dictionaries(keys, texts, max_size=8),
)
def test_format_then_parse_is_the_identity(name: str | None, metadata: dict[str, str]) -> None:
    assert parse_upload_metadata(format_upload_metadata(name, metadata)) == (name, metadata)


def test_an_empty_header_means_nothing_declared() -> None:
    assert parse_upload_metadata("") == (None, {})
    assert parse_upload_metadata(" , ") == (None, {})


def test_a_key_without_a_value_is_an_empty_string() -> None:
    assert parse_upload_metadata("flag") == (None, {"flag": ""})


@pytest.mark.parametrize(
    "value",
    [
        "k !!!",  # not base64
        "k //8=",  # base64 of bytes that are not UTF-8
        "k YQ==,k YQ==",  # repeated key
        "ké YQ==",  # non-ASCII key
        "name ",  # empty name
        ",".join(f"k{i} YQ==" for i in range(MAX_METADATA + 1)),
    ],
)
def test_malformed_metadata_is_refused(value: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_upload_metadata(value)
    assert caught.value.code == "invalid_metadata"
