"""OCI image layouts written by hand for tests: each layer a tar (see tests/fakes/image_tars),
gzip'ed or not, with a config naming their diff_ids and a run config."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def write_oci_layout(out: Path, layers: list[tuple[bytes, bool]], run: dict[str, Any], *, tag: str = "1") -> Path:
    """An OCI layout at ``out``: ``layers`` lowest first, each ``(tar bytes, gzip it)``."""
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        hexd = hashlib.sha256(data).hexdigest()
        (blobs / hexd).write_bytes(data)
        return {"digest": f"sha256:{hexd}", "size": len(data)}

    descs = []
    for raw, gz in layers:
        blob = gzip.compress(raw, 1) if gz else raw
        descs.append({"mediaType": LAYER_TAR + ("+gzip" if gz else ""), **put(blob)})
    config = {
        "architecture": "amd64", "os": "linux", "config": run,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(raw).hexdigest()}" for raw, _ in layers]},
    }
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(json.dumps(config).encode())},
        "layers": descs,
    }
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                **put(json.dumps(manifest).encode()),
                                                "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (out / "index.json").write_text(json.dumps(index))
    (out / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return out
