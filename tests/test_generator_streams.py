"""Versions 2 and 3 of the generator as the module's docstring defines them, written out
here independently, and checked whatever the pieces a file is cut into; and where
version 3's dependency (`cryptography`) is loaded: only by version 3 itself."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st
from support import Launcher

from transfer.sender.generator import BLOCK, PIECE, content_for, content_pieces

seeds = st.integers(min_value=-(2**63), max_value=2**63)
indices = st.integers(min_value=0, max_value=10_000)
sizes = st.integers(min_value=0, max_value=3000).map(lambda n: 2 * n)


def pieces_of(seed: int, index: int, size: int, piece: int, version: int) -> list[bytes]:
    return list(content_pieces(seed, index, size, piece, version=version))


def lengths_are(pieces: list[bytes], size: int, piece: int) -> bool:
    """Every piece but the last is `piece` bytes, and they add up to `size`."""
    return sum(map(len, pieces)) == size and all(len(p) == piece for p in pieces[:-1])


# --- version 2: SHAKE128 in blocks ---------------------------------------------------


def shake_blocks(seed: int, index: int, size: int) -> bytes:
    """Version 2 as the module's docstring defines it, written out."""
    blocks = [
        hashlib.shake_128(f"{seed}:{index}:content:{k}".encode()).digest(BLOCK)
        for k in range(-(-size // BLOCK))
    ]
    return b"".join(blocks)[:size]


@given(seeds, indices, st.integers(min_value=0, max_value=3000).map(lambda n: 2 * n))
def test_version_2_is_shake128_blocks_whatever_the_pieces(seed: int, index: int, size: int) -> None:
    for piece in (4, 12, BLOCK, PIECE):
        joined = b"".join(content_pieces(seed, index, size, piece, version=2))
        assert joined == shake_blocks(seed, index, size)


@pytest.mark.parametrize("size", [BLOCK - 2, BLOCK, BLOCK + 2, 2 * BLOCK + 6])
@pytest.mark.parametrize("piece", [12, BLOCK - 4, BLOCK, 2 * BLOCK])
def test_version_2_around_block_and_piece_boundaries(size: int, piece: int) -> None:
    pieces = list(content_pieces(5, 9, size, piece, version=2))
    assert b"".join(pieces) == shake_blocks(5, 9, size)
    assert [len(p) for p in pieces][:-1] == [piece] * (-(-size // piece) - 1)
    assert content_for(5, 9, size - 2, version=2) == shake_blocks(5, 9, size)[:-2]  # a prefix


# --- version 3: AES-128-CTR -----------------------------------------------------------


def aes_key(seed: int, index: int) -> bytes:
    return hashlib.shake_128(f"{seed}:{index}:content:v3".encode("ascii")).digest(16)


def counter_blocks(seed: int, index: int, size: int) -> bytes:
    """Version 3 as the module's docstring defines it, written out without CTR mode:
    byte j is byte j % 16 of AES-128(key, j // 16 as a 16-byte big-endian number)."""
    counters = b"".join(j.to_bytes(16, "big") for j in range(-(-size // 16)))
    ecb = Cipher(algorithms.AES(aes_key(seed, index)), modes.ECB()).encryptor()
    return ecb.update(counters)[:size]


@given(seeds, indices, sizes)
def test_version_3_is_aes_of_the_counter_blocks_whatever_the_pieces(
    seed: int, index: int, size: int
) -> None:
    # 4, 12 and 20 bytes cut keystream blocks at every 4-byte offset a piece can start at.
    for piece in (4, 12, 20, 1000, PIECE):
        pieces = pieces_of(seed, index, size, piece, version=3)
        assert b"".join(pieces) == counter_blocks(seed, index, size)
        assert lengths_are(pieces, size, piece)


@pytest.mark.parametrize("size", [2, 14, 16, 18, PIECE - 2, PIECE, PIECE + 2, 2 * PIECE + 6])
@pytest.mark.parametrize("piece", [20, PIECE - 4, PIECE])
def test_version_3_around_aes_block_and_piece_boundaries(size: int, piece: int) -> None:
    pieces = pieces_of(2, 7, size, piece, version=3)
    whole = counter_blocks(2, 7, size + 2)
    assert b"".join(pieces) == whole[:size]
    assert lengths_are(pieces, size, piece)
    assert content_for(2, 7, size + 2, version=3) == whole  # a file is a prefix of larger ones


@pytest.mark.parametrize("offset", [0, 16, 4096, BLOCK + 48, PIECE - 16, PIECE])
def test_version_3_bytes_from_an_aligned_offset_need_nothing_before_them(offset: int) -> None:
    # What the docstring promises another implementation: start at counter block o // 16.
    file = content_for(9, 3, PIECE + 4096, version=3)
    counter = (offset // 16).to_bytes(16, "big")
    alone = Cipher(algorithms.AES(aes_key(9, 3)), modes.CTR(counter)).encryptor()
    assert alone.update(bytes(1000)) == file[offset : offset + 1000]


# --- who loads cryptography -----------------------------------------------------------


LOADED = "import sys; print('cryptography' in sys.modules, end=' ')\n"
PROBE = (
    "import transfer.cli, transfer.cli.send, transfer.cli.serve, transfer.server.app\n"
    "import transfer.sender.pipeline\n"
    "from transfer.sender.generator import content_for\n"
    "content_for(1, 0, 64, version=1), content_for(1, 0, 64, version=2)\n"
    f"{LOADED}content_for(1, 0, 64, version=3)\n{LOADED}"
)


def test_only_version_3_imports_cryptography() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["False", "True"], done.stderr


def test_a_running_server_has_not_loaded_cryptography(tmp_path: Path) -> None:
    with Launcher(tmp_path) as launch:
        server = launch.serve(tmp_path / "data")
        maps = Path(f"/proc/{server.pid}/maps").read_text()
    assert "cryptography" not in maps
    assert "python" in maps  # the map of the server itself, not of some wrapper
