"""The pure tus header parsers (`transfer.core.tus`): every refusal has its code."""

from __future__ import annotations

import base64
import hashlib

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from transfer.core import tus
from transfer.core.errors import Code, ProtocolError


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def code_of(excinfo: pytest.ExceptionInfo[ProtocolError]) -> str:
    return excinfo.value.code


def test_only_version_1_0_0_passes_and_a_refusal_names_the_supported_one() -> None:
    tus.check_version("1.0.0")
    for bad in (None, "", "0.2.2", "1.0.0 ", "2.0.0"):
        with pytest.raises(ProtocolError) as excinfo:
            tus.check_version(bad)
        assert excinfo.value.status == 412
        assert excinfo.value.code == Code.TUS_VERSION_UNSUPPORTED
        assert excinfo.value.headers == {"Tus-Version": "1.0.0"}


@pytest.mark.parametrize("value", ["0", "17", " 5 ", str(2**53)])
def test_offsets_are_plain_non_negative_integers(value: str) -> None:
    assert tus.parse_offset(value) == int(value)


@pytest.mark.parametrize("value", [None, "", "-1", "+1", "01", "1.0", "٣", str(2**53 + 1), "x"])
def test_bad_offsets_are_refused(value: str | None) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        tus.parse_offset(value)
    assert code_of(excinfo) == Code.INVALID_UPLOAD_OFFSET


def test_creation_needs_exactly_one_of_length_and_defer() -> None:
    assert tus.creation_length("10", None) == 10
    assert tus.creation_length(None, "1") is None
    for length, defer in ((None, None), ("10", "1"), (None, "0"), (None, "yes"), ("x", None)):
        with pytest.raises(ProtocolError) as excinfo:
            tus.creation_length(length, defer)
        assert code_of(excinfo) == Code.INVALID_UPLOAD_LENGTH


def test_metadata_keeps_every_pair_including_empty_values() -> None:
    value = f"filename {b64('ünï.txt'.encode())},filetype {b64(b'text/plain')},empty"
    metadata = tus.parse_metadata(value)
    assert metadata == {"filename": "ünï.txt", "filetype": "text/plain", "empty": ""}
    assert tus.format_metadata(metadata) == value
    assert tus.name_of(metadata) == "ünï.txt"
    assert tus.name_of({"filetype": "x"}) is None
    assert tus.parse_metadata(None) == {}


@pytest.mark.parametrize(
    "value",
    [
        "a YQ==,a YQ==",  # repeated key
        "a !!!",  # not base64
        f"a {b64(bytes([0xFF]))}",  # not UTF-8
        "k\u00e9y YQ==",  # not ASCII
        ",".join(f"k{i} YQ==" for i in range(tus.MAX_METADATA + 1)),
    ],
)
def test_bad_metadata_is_refused(value: str) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        tus.parse_metadata(value)
    assert code_of(excinfo) == Code.INVALID_METADATA


def test_an_overlong_filename_is_refused() -> None:
    with pytest.raises(ProtocolError) as excinfo:
        tus.name_of({"filename": "x" * 1025})
    assert code_of(excinfo) == Code.INVALID_METADATA


@given(
    st.dictionaries(
        st.text(
            st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
            min_size=1,
            max_size=10,
        ),
        st.text(max_size=20),
        max_size=8,
    )
)
def test_metadata_round_trips(metadata: dict[str, str]) -> None:
    assert tus.parse_metadata(tus.format_metadata(metadata)) == metadata


@pytest.mark.parametrize(
    ("name", "algorithm", "digest"),
    [
        ("sha1", "sha1", hashlib.sha1(b"hi").digest()),
        ("md5", "md5", hashlib.md5(b"hi").digest()),
        ("sha256", "sha-256", hashlib.sha256(b"hi").digest()),
        ("xxh3-128", "xxh3-128", xxhash.xxh3_128_digest(b"hi")),
    ],
)
def test_checksums_map_to_integrity_algorithms(name: str, algorithm: str, digest: bytes) -> None:
    assert tus.parse_checksum(f"{name} {b64(digest)}") == tus.Checksum(algorithm, digest)


def test_checksum_refusals() -> None:
    assert tus.parse_checksum(None) is None
    cases = {
        f"crc32 {b64(b'1234')}": Code.CHECKSUM_ALGORITHM_UNSUPPORTED,
        f"SHA1 {b64(hashlib.sha1().digest())}": Code.CHECKSUM_ALGORITHM_UNSUPPORTED,
        "sha1 !!!": Code.INVALID_CHECKSUM,
        f"sha1 {b64(b'short')}": Code.INVALID_CHECKSUM,
        "sha1": Code.INVALID_CHECKSUM,
    }
    for value, code in cases.items():
        with pytest.raises(ProtocolError) as excinfo:
            tus.parse_checksum(value)
        assert (value, code_of(excinfo)) == (value, code)


def test_concat_values() -> None:
    assert tus.parse_concat(None) is None
    assert tus.parse_concat("partial") == tus.Partial()
    final = tus.parse_concat("final;http://h/tus/a /tus/b")
    assert final == tus.Final(("http://h/tus/a", "/tus/b"))
    assert isinstance(final, tus.Final)
    assert tus.partial_ids(final, "/tus/") == ["a", "b"]
    for bad in ("final", "final;", "final; ", "partial;x", "whole"):
        with pytest.raises(ProtocolError) as excinfo:
            tus.parse_concat(bad)
        assert code_of(excinfo) == Code.INVALID_UPLOAD_CONCAT


def test_partial_urls_must_name_uploads_under_the_base_path() -> None:
    with pytest.raises(ProtocolError) as excinfo:
        tus.partial_ids(tus.Final(("/uploads/a",)), "/tus/")
    assert code_of(excinfo) == Code.INVALID_UPLOAD_CONCAT
    with pytest.raises(ProtocolError) as excinfo:
        tus.partial_ids(tus.Final(("/tus/../etc",)), "/tus/")
    assert code_of(excinfo) == Code.INVALID_ID


def test_method_override() -> None:
    assert tus.parse_override(None, "POST") == "POST"
    assert tus.parse_override("patch", "POST") == "PATCH"
    with pytest.raises(ProtocolError) as excinfo:
        tus.parse_override("TRACE", "POST")
    assert code_of(excinfo) == Code.INVALID_METHOD_OVERRIDE
