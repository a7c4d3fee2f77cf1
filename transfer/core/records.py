"""What the server knows about an upload, as values, and their JSON form on disk.

`UploadSpec` is what a client declared, `FileRecord` what a completed upload is
(returned by every completion answer), `UploadInfo` both plus the offset. The JSON
helpers read and write `DATA_DIR/uploads/{id}.json`. Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from transfer.core import integrity
from transfer.core.errors import (
    Code,
    Conflict,
)
from transfer.core.integrity import Digests
from transfer.core.protocol import UploadState, check_total


@dataclass(frozen=True, slots=True)
class UploadSpec:
    """What a client declared about an upload."""

    upload_id: str
    name: str | None = None
    size: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    repr_digest: Digests = field(default_factory=dict)
    # The front-end that created it ("native", "tus"): the metrics label, and the
    # whole-file algorithms (`store.shared.whole_algorithms`).
    protocol: str = "native"
    # Front-end parameters kept with the upload, never interpreted by the engine
    # (tus: `Upload-Concat` as received, for HEAD and for refusing PATCH on a final).
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A completed, verified file: what every completion answer returns."""

    upload_id: str
    name: str | None
    size: int
    metadata: Mapping[str, str]
    digests: Digests

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "id": self.upload_id,
            "name": self.name,
            "size": self.size,
            "metadata": dict(self.metadata),
            "digests": integrity.to_hex(
                {k: v for k, v in self.digests.items() if k in integrity.ALGORITHMS}
            ),
        }
        if "md5" in self.digests:
            body["md5Hash"] = integrity.md5_base64(self.digests["md5"])
        return body


@dataclass(frozen=True, slots=True)
class UploadInfo:
    spec: UploadSpec
    state: UploadState
    record: FileRecord | None = None


def declared(info: UploadInfo, size: int | None, repr_digest: Digests) -> UploadInfo | None:
    """`info` after a total or a whole-file digest learned late; None when nothing changes.

    Raises:
        Conflict: `total_mismatch` from `check_total`, before anything is saved.
    """
    spec = info.spec
    new_size = check_total(info.state, size)
    new_digest = dict(repr_digest) if repr_digest else dict(spec.repr_digest)
    if new_size == spec.size and new_digest == dict(spec.repr_digest):
        return None
    spec = replace(spec, size=new_size, repr_digest=new_digest)
    return replace(info, spec=spec, state=UploadState(info.state.offset, new_size))


def check_same(existing: UploadSpec, wanted: UploadSpec) -> None:
    for name in ("name", "metadata", "repr_digest"):
        value = getattr(wanted, name)
        if value and value != getattr(existing, name):
            raise Conflict(Code.UPLOAD_CONFLICT, f"upload exists with a different {name}")
    if wanted.size is not None and existing.size not in (None, wanted.size):
        raise Conflict(Code.UPLOAD_CONFLICT, "upload exists with a different size")


def spec_to_json(spec: UploadSpec) -> dict[str, object]:
    doc: dict[str, object] = {
        "id": spec.upload_id,
        "name": spec.name,
        "size": spec.size,
        "metadata": dict(spec.metadata),
        "repr_digest": integrity.to_hex(spec.repr_digest),
    }
    if spec.protocol != "native":  # native documents stay as they always were
        doc.update(protocol=spec.protocol, extra=dict(spec.extra))
    return doc


def spec_from_json(doc: dict[str, Any]) -> UploadSpec:
    return UploadSpec(
        upload_id=doc["id"],
        name=doc.get("name"),
        size=doc.get("size"),
        metadata=doc.get("metadata") or {},
        repr_digest=integrity.from_hex(doc.get("repr_digest") or {}),
        protocol=doc.get("protocol") or "native",
        extra=doc.get("extra") or {},
    )


def record_from_json(doc: dict[str, Any]) -> FileRecord:
    return FileRecord(
        upload_id=doc["id"],
        name=doc.get("name"),
        size=doc["size"],
        metadata=doc.get("metadata") or {},
        digests=integrity.from_hex(doc.get("digests") or {}),
    )
