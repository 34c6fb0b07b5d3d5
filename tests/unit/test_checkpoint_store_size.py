"""A local checkpoint's size is what it takes on disk (migrate/archive/store.py): its upper.img is
a sparse file of the whole upper-layer budget, so the apparent size would say 16 GiB for MiBs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from migrate.archive.store import MANIFEST, UPPER_IMAGE, CheckpointStore
from runtime.config import Paths

GiB = 1 << 30


def test_checkpoint_ls_counts_allocated_bytes_not_a_sparse_files_apparent_size(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "root")
    paths.ensure()
    store = CheckpointStore(paths)
    d = store.dir("c0ffee")
    d.mkdir(parents=True)
    (d / MANIFEST).write_text(json.dumps({"checkpoint_id": "c0ffee", "container": {"name": "web"}, "created_at": 1.0}))
    written = os.urandom(256 << 10)
    with open(d / UPPER_IMAGE, "wb") as f:
        f.truncate(16 * GiB)  # sparse: nothing allocated
        f.seek(GiB)
        f.write(written)  # 256 KiB of data in the middle
    st = os.stat(d / UPPER_IMAGE)
    assert st.st_size == 16 * GiB and st.st_blocks * 512 < 4 * len(written)  # the filesystem keeps it sparse

    (info,) = store.list()
    assert info.checkpoint_id == "c0ffee" and info.container_name == "web"
    allocated = sum(os.stat(p).st_blocks * 512 for p in (d / MANIFEST, d / UPPER_IMAGE))
    assert info.size_bytes == allocated
    assert len(written) <= info.size_bytes < 4 * len(written)
