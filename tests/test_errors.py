"""The error-code registry: one table in code, the same table in docs/protocol.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from transfer.core.errors import BadRequest, Code, DigestMismatch, NotFound, ProtocolError

PROTOCOL_MD = Path(__file__).parent.parent / "docs" / "protocol.md"
# Codes a server never answers with, and why they are in the registry all the same.
NOT_ANSWERED = {
    Code.CERTIFICATE_VERIFY_FAILED: "the sender's own name for an untrusted certificate",
    Code.INVALID_RANGE: "a malformed Range from a server (sender) or for a file (416)",
    Code.BODY_INCOMPLETE: "the client that sent the body is gone and hears nothing",
}


def documented_codes() -> dict[str, int]:
    """`code -> status` from the "Status and error codes" table of docs/protocol.md."""
    text = PROTOCOL_MD.read_text()
    table = text.split("## Status and error codes", 1)[1].split("\n## ", 1)[0]
    found: dict[str, int] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 2 and (status := re.match(r"\d{3}", cells[1])):
            for code in re.findall(r"`([a-z_]+)`", cells[0]):
                found[code] = int(status.group())
    return found


def test_the_docs_table_and_the_registry_agree() -> None:
    answered = {str(c): c.status for c in Code if c not in NOT_ANSWERED}
    assert documented_codes() == answered


@pytest.mark.parametrize("code", list(Code))
def test_every_code_is_snake_case_with_a_status_and_title(code: Code) -> None:
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code)
    assert code.status == 0 or 400 <= code.status <= 599
    assert code.problem_title


def test_the_status_and_title_come_from_the_code() -> None:
    error = DigestMismatch(Code.REPR_DIGEST_MISMATCH, "whole file differs")
    assert (error.status, error.title, error.code) == (
        400,
        "Digest Mismatch",
        "repr_digest_mismatch",
    )
    assert NotFound(Code.FILE_NOT_FOUND, "x").problem() == {
        "type": "urn:transfer:error:file_not_found",
        "title": "Not Found",
        "status": 404,
        "code": "file_not_found",
        "detail": "x",
    }


def test_codes_compare_equal_to_the_strings_clients_read_off_the_wire() -> None:
    wire = "upload_not_found"
    assert wire == Code.UPLOAD_NOT_FOUND and wire in frozenset({Code.UPLOAD_NOT_FOUND})
    assert isinstance(BadRequest(Code.INVALID_ID, "bad"), ProtocolError)
