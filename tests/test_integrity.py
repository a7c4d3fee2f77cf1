"""Tests for `transfer.integrity`: RFC 9530 digest fields, hashing, verification.

Expected digests come from hashlib / xxhash directly or from published test vectors,
never from the module under test.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from typing import Literal

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from transfer.core.errors import BadRequest, DigestMismatch
from transfer.core.integrity import (
    ALGORITHMS,
    PREFERRED,
    MultiHasher,
    digest_of,
    format_digest_field,
    from_hex,
    md5_base64,
    parse_digest_field,
    to_hex,
    verify,
)

# Published vectors: SHA-256 from FIPS 180-2, XXH3-128 of the empty input (seed 0).
SHA256_EMPTY = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
SHA256_ABC = bytes.fromhex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
XXH3_128_EMPTY = bytes.fromhex("99aa06d3014798d86001c324468d497f")

SIZES = {"xxh3-128": 16, "sha-256": 32}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def reference(data: bytes, algorithm: str) -> bytes:
    """The digest computed straight from the underlying libraries."""
    if algorithm == "xxh3-128":
        return xxhash.xxh3_128(data).digest()
    return hashlib.new({"sha-256": "sha256", "md5": "md5"}[algorithm], data).digest()


@st.composite
def digest_maps(draw: st.DrawFn) -> dict[str, bytes]:
    """A non-empty {algorithm: raw digest} of the algorithms we speak."""
    names = draw(st.lists(st.sampled_from(sorted(SIZES)), min_size=1, max_size=2, unique=True))
    return {name: draw(st.binary(min_size=SIZES[name], max_size=SIZES[name])) for name in names}


# --- known vectors and the algorithm table -------------------------------------------------


def test_known_vectors() -> None:
    assert digest_of(b"", "sha-256") == SHA256_EMPTY
    assert digest_of(b"abc", "sha-256") == SHA256_ABC
    assert digest_of(b"", "xxh3-128") == XXH3_128_EMPTY
    assert digest_of(b"") == XXH3_128_EMPTY  # xxh3-128 is the default


def test_preferred_algorithm_is_spoken() -> None:
    assert PREFERRED == "xxh3-128"
    assert set(ALGORITHMS) == {"xxh3-128", "sha-256"}  # md5 is never accepted


@given(st.binary(max_size=4096), st.sampled_from(["xxh3-128", "sha-256", "md5"]))
def test_digest_of_matches_the_libraries(data: bytes, algorithm: str) -> None:
    assert digest_of(data, algorithm) == reference(data, algorithm)


# --- parse / format ------------------------------------------------------------------------


def test_parse_known_vectors() -> None:
    value = f"sha-256=:{b64(SHA256_ABC)}:, xxh3-128=:{b64(XXH3_128_EMPTY)}:"
    assert parse_digest_field(value) == {"sha-256": SHA256_ABC, "xxh3-128": XXH3_128_EMPTY}
    # the RFC 9530 example form, written by hand
    literal = "sha-256=:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=:"
    assert parse_digest_field(literal) == {"sha-256": SHA256_ABC}


def test_format_known_vectors() -> None:
    assert (
        format_digest_field({"xxh3-128": XXH3_128_EMPTY}) == "xxh3-128=:maoG0wFHmNhgAcMkRo1Jfw==:"
    )
    assert (
        format_digest_field({"sha-256": SHA256_ABC, "xxh3-128": XXH3_128_EMPTY})
        == "sha-256=:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=:, "
        "xxh3-128=:maoG0wFHmNhgAcMkRo1Jfw==:"
    )


def test_format_drops_algorithms_we_do_not_speak() -> None:
    md5 = hashlib.md5(b"abc").digest()
    assert format_digest_field({"md5": md5, "sha-256": SHA256_ABC}) == (
        f"sha-256=:{b64(SHA256_ABC)}:"
    )
    assert format_digest_field({"md5": md5}) == ""


@given(digest_maps())
def test_format_then_parse_round_trips(digests: dict[str, bytes]) -> None:
    text = format_digest_field(digests)
    assert text.isascii()
    assert parse_digest_field(text) == digests


@given(st.binary(max_size=2048))
def test_digests_of_data_round_trip(data: bytes) -> None:
    digests = {name: reference(data, name) for name in SIZES}
    assert parse_digest_field(format_digest_field(digests)) == digests


@pytest.mark.parametrize(
    "value",
    [
        f"md5=:{b64(hashlib.md5(b'abc').digest())}:",  # never accepted from a client
        "crc32c=:yZRlqg==:",
        "sha-512=:" + b64(hashlib.sha512(b"abc").digest()) + ":",
        "unixsum=:AAAA:",
        "x-custom=::",
    ],
)
def test_unknown_algorithms_are_ignored(value: str) -> None:
    assert parse_digest_field(value) == {}


def test_unknown_algorithms_beside_known_ones() -> None:
    md5 = b64(hashlib.md5(b"abc").digest())
    value = f"md5=:{md5}:, sha-256=:{b64(SHA256_ABC)}:, crc32c=:AAAAAA==:"
    assert parse_digest_field(value) == {"sha-256": SHA256_ABC}


@pytest.mark.parametrize(
    "suffix",
    [";a=1", ";a", ";a=1;b=?0", ';name="x"', "; a=1", ";*x=tok"],
)
def test_parameters_after_semicolon_are_tolerated(suffix: str) -> None:
    value = f"sha-256=:{b64(SHA256_ABC)}:{suffix}"
    assert parse_digest_field(value) == {"sha-256": SHA256_ABC}


@pytest.mark.parametrize("separator", [",", ", ", " , ", ",\t", "\t,  ", ",   "])
def test_multiple_members_with_optional_whitespace(separator: str) -> None:
    xxh = digest_of(b"abc", "xxh3-128")
    value = f"  sha-256=:{b64(SHA256_ABC)}:{separator}xxh3-128=:{b64(xxh)}:\t"
    assert parse_digest_field(value) == {
        "sha-256": SHA256_ABC,
        "xxh3-128": reference(b"abc", "xxh3-128"),
    }


@pytest.mark.parametrize(
    "value",
    [
        # wrong length for the algorithm
        f"sha-256=:{b64(SHA256_ABC[:-1])}:",
        f"sha-256=:{b64(SHA256_ABC + b'x')}:",
        f"sha-256=:{b64(XXH3_128_EMPTY)}:",  # a 16-byte digest labelled sha-256
        f"xxh3-128=:{b64(SHA256_ABC)}:",
        "sha-256=::",
        "xxh3-128=::",
        # bad base64
        "sha-256=:not base64:",
        "sha-256=:!!!!:",
        "sha-256=:-_-_:",  # base64url is not base64
        "xxh3-128=:maoG0wFHmNhgAcMkRo1Jfw:",  # padding missing
        "xxh3-128=:maoG0wFHmNhgAcMkRo1Jfw=:",  # padding short
        "xxh3-128=:=maoG0wFHmNhgAcMkRo1Jfw=:",
        "xxh3-128=:maoG0wFH=mNhgAcMkRo1Jfw==:",  # padding in the middle
        "xxh3-128=:maoG====0wFHmNhgAcMkRo1Jfw==:",
        "xxh3-128=:maoG0wFHmNhgAcMkRo1Jfw==AAAA:",  # data after the padding
        "xxh3-128=:maoG0wFHmNhgAcMkRo1Jfw=A=:",
        # not a byte sequence / not a dictionary
        f"sha-256={b64(SHA256_ABC)}",
        f"sha-256=:{b64(SHA256_ABC)}",
        f"sha-256:{b64(SHA256_ABC)}:",
        f"SHA-256=:{b64(SHA256_ABC)}:",  # keys are lowercase
        f"sha-256 =:{b64(SHA256_ABC)}:",
        f"sha-256= :{b64(SHA256_ABC)}:",
        f"sha-256=:{b64(SHA256_ABC)}:,",  # trailing comma
        f",sha-256=:{b64(SHA256_ABC)}:",
        f"sha-256=:{b64(SHA256_ABC)}:,,xxh3-128=:{b64(XXH3_128_EMPTY)}:",
        f"sha-256=:{b64(SHA256_ABC)}: xxh3-128=:{b64(XXH3_128_EMPTY)}:",
        f"sha-256=:{b64(SHA256_ABC)}:x",
        "",
        "garbage",
        "=:AAAA:",
        # non-ASCII anywhere
        f"sha-256=:{b64(SHA256_ABC)}:;\N{LATIN SMALL LETTER E WITH ACUTE}=1",
        f"sh\N{CYRILLIC SMALL LETTER A}-256=:{b64(SHA256_ABC)}:",  # Cyrillic a lookalike
        f"sha-256=:{b64(SHA256_ABC)[:-2]}" + "\N{FULLWIDTH EQUALS SIGN}" * 2 + ":",
        f"\N{NO-BREAK SPACE}sha-256=:{b64(SHA256_ABC)}:",
    ],
)
def test_malformed_fields_are_invalid_digest(value: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_digest_field(value)
    assert info.value.code == "invalid_digest"
    assert info.value.status == 400


@given(st.text(max_size=80) | st.text(alphabet="sha-256xh3:=,; \tAZaz09+/", max_size=80))
def test_parse_fails_only_with_bad_request(value: str) -> None:
    try:
        result = parse_digest_field(value)
    except BadRequest as exc:
        assert exc.code == "invalid_digest"
    else:
        assert set(result) <= set(SIZES)
        assert all(len(raw) == SIZES[name] for name, raw in result.items())


# --- verify --------------------------------------------------------------------------------


def test_verify_passes_on_equal_digests() -> None:
    digests = {"sha-256": SHA256_ABC, "xxh3-128": reference(b"abc", "xxh3-128")}
    verify(digests, dict(digests), what="chunk")


@pytest.mark.parametrize("what", ["chunk", "repr"])
@pytest.mark.parametrize("algorithm", ["sha-256", "xxh3-128"])
def test_verify_raises_on_any_difference(what: Literal["chunk", "repr"], algorithm: str) -> None:
    good = {"sha-256": SHA256_ABC, "xxh3-128": reference(b"abc", "xxh3-128")}
    bad = dict(good)
    bad[algorithm] = bytes(SIZES[algorithm])
    with pytest.raises(DigestMismatch) as info:
        verify(good, bad, what=what)
    assert info.value.code == f"{what}_digest_mismatch"
    assert info.value.status == 400
    assert algorithm in info.value.detail
    with pytest.raises(DigestMismatch):
        verify(bad, good, what=what)


@pytest.mark.parametrize("index", [0, 7, -1])
@pytest.mark.parametrize("algorithm", ["sha-256", "xxh3-128"])
def test_verify_notices_a_single_flipped_bit(algorithm: str, index: int) -> None:
    good = reference(b"abc", algorithm)
    flipped = bytearray(good)
    flipped[index] ^= 0x01
    with pytest.raises(DigestMismatch):
        verify({algorithm: good}, {algorithm: bytes(flipped)}, what="chunk")


def test_verify_compares_only_algorithms_on_both_sides() -> None:
    sha = {"sha-256": SHA256_ABC}
    xxh = {"xxh3-128": XXH3_128_EMPTY}
    verify(sha, xxh, what="chunk")  # nothing in common: nothing to compare
    verify({}, {"sha-256": SHA256_ABC}, what="chunk")
    verify({"sha-256": SHA256_ABC}, {}, what="chunk")
    # a wrong digest on one side only matters when the other side has that algorithm
    verify({"sha-256": SHA256_EMPTY, "xxh3-128": XXH3_128_EMPTY}, xxh, what="repr")
    with pytest.raises(DigestMismatch) as info:
        verify({"sha-256": SHA256_EMPTY, "xxh3-128": XXH3_128_EMPTY}, sha, what="repr")
    assert info.value.code == "repr_digest_mismatch"


@given(st.binary(max_size=512), st.binary(max_size=512))
def test_verify_detects_different_data(first: bytes, second: bytes) -> None:
    expected = {name: reference(first, name) for name in SIZES}
    actual = {name: reference(second, name) for name in SIZES}
    if first == second:
        verify(expected, actual, what="chunk")
    else:
        with pytest.raises(DigestMismatch):
            verify(expected, actual, what="chunk")


# --- MultiHasher ---------------------------------------------------------------------------


@given(
    st.binary(max_size=4096),
    st.lists(st.integers(0, 4096), max_size=12),
    st.lists(st.sampled_from(["xxh3-128", "sha-256", "md5"]), unique=True),
)
def test_multihasher_chunked_equals_one_shot(
    data: bytes, cuts: list[int], algorithms: list[str]
) -> None:
    hasher = MultiHasher(algorithms)
    points = sorted({0, len(data), *(min(cut, len(data)) for cut in cuts)})
    for start, end in itertools.pairwise(points):
        hasher.update(data[start:end])
    hasher.update(b"")  # empty updates change nothing
    digests = hasher.digests()
    assert set(digests) == set(algorithms)
    for name in algorithms:
        assert digests[name] == reference(data, name)
        assert digests[name] == digest_of(data, name)


@pytest.mark.parametrize("chunk", [1000, 4096, 65536, 262144, 1 << 20])
def test_multihasher_over_a_large_buffer(chunk: int) -> None:
    # Real chunks are hundreds of KiB; Hypothesis mostly draws small inputs.
    data = hashlib.shake_256(b"seed").digest(3 * (1 << 20) + 17)
    hasher = MultiHasher(["xxh3-128", "sha-256", "md5"])
    for start in range(0, len(data), chunk):
        hasher.update(data[start : start + chunk])
    assert hasher.digests() == {name: reference(data, name) for name in SIZES | {"md5": 16}}


def test_multihasher_with_no_algorithms() -> None:
    hasher = MultiHasher([])
    hasher.update(b"abc")
    assert hasher.digests() == {}


def test_multihasher_rejects_unknown_algorithm() -> None:
    with pytest.raises(KeyError):
        MultiHasher(["crc32c"])


# --- helpers -------------------------------------------------------------------------------


@given(st.binary(max_size=1024))
def test_md5_base64_matches_hashlib(data: bytes) -> None:
    raw = hashlib.md5(data).digest()
    assert md5_base64(raw) == base64.b64encode(raw).decode("ascii")
    assert md5_base64(digest_of(data, "md5")) == base64.b64encode(raw).decode("ascii")


def test_md5_base64_known_vector() -> None:
    # GCS's md5Hash of an empty object.
    assert md5_base64(hashlib.md5(b"").digest()) == "1B2M2Y8AsgTpgAmY7PhCfg=="


@given(digest_maps())
def test_hex_round_trip(digests: dict[str, bytes]) -> None:
    as_hex = to_hex(digests)
    assert as_hex == {name: raw.hex() for name, raw in digests.items()}
    assert from_hex(as_hex) == digests


def test_to_hex_known_vector() -> None:
    assert to_hex({"sha-256": SHA256_ABC}) == {
        "sha-256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    }
