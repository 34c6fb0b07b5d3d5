"""migrate/archive/partial_exports.py: an export's temp file and staging dir are removed once
its writer is gone (however it died), never while it writes, and nothing a record does not
name the way an export would is touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from migrate.archive import partial_exports as pe

CID = "0123456789abcdef01234567"


def _layout(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    run, tmp, out = tmp_path / "run", tmp_path / "tmp", tmp_path / "out"
    for d in (run, tmp, out):
        d.mkdir()
    staging = tmp / f"ckpt-{CID}"
    (staging / "images").mkdir(parents=True)
    return run, tmp, pe.temp_path(out / "hog.pma", CID), staging


def test_kept_while_its_writer_holds_it_removed_with_its_staging_once_it_is_gone(tmp_path: Path) -> None:
    run, tmp, temp, staging = _layout(tmp_path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT, 0o600)
    pe.begin(run, CID, temp, fd, staging)
    assert pe.sweep(run, tmp) == [] and temp.exists() and staging.exists()  # this process writes it
    os.close(fd)  # the writer is gone: its lock with it
    assert pe.sweep(run, tmp) == [temp, staging]
    assert not temp.exists() and not staging.exists() and not list((run / pe.EXPORTS_DIR).iterdir())
    assert pe.sweep(run, tmp) == []


def test_a_finished_export_leaves_no_record(tmp_path: Path) -> None:
    run, tmp, temp, staging = _layout(tmp_path)
    with open(temp, "wb") as f:
        pe.begin(run, CID, temp, f.fileno(), staging)
        final = temp.with_name("hog.pma")
        os.rename(temp, final)
        pe.end(run, CID)
    assert pe.sweep(run, tmp) == [] and final.exists() and staging.exists()


def test_a_writer_in_another_process_is_live_until_it_is_killed(tmp_path: Path) -> None:
    run, tmp, temp, staging = _layout(tmp_path)
    code = ("import os, sys, time\nfrom pathlib import Path\nfrom migrate.archive import partial_exports as pe\n"
            f"fd = os.open({str(temp)!r}, os.O_WRONLY | os.O_CREAT, 0o600)\n"
            f"pe.begin(Path({str(run)!r}), {CID!r}, Path({str(temp)!r}), fd, Path({str(staging)!r}))\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == b"ready"
        assert pe.sweep(run, tmp) == [] and temp.exists()
        writer.kill()
        writer.wait()
        deadline = time.monotonic() + 5
        while temp.exists() and time.monotonic() < deadline:
            pe.sweep(run, tmp)
        assert not temp.exists() and not staging.exists()
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.communicate()  # waits, closes the pipe


def test_a_record_naming_something_else_is_dropped_and_the_thing_kept(tmp_path: Path) -> None:
    run, tmp, temp, staging = _layout(tmp_path)
    precious = tmp_path / "precious"
    precious.write_text("keep")
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    exports = run / pe.EXPORTS_DIR
    exports.mkdir()
    (exports / CID).write_text(json.dumps({"temp": str(precious), "staging": str(other_dir)}))
    (exports / "not-an-id").write_text(json.dumps({"temp": str(precious)}))
    assert pe.sweep(run, tmp) == []
    assert precious.read_text() == "keep" and other_dir.is_dir()
    assert not (exports / CID).exists() and (exports / "not-an-id").exists()  # only ids are ours to read
    # the right temp name but a staging dir outside tmp: the temp goes, the dir stays
    (exports / CID).write_text(json.dumps({"temp": str(temp), "staging": str(other_dir)}))
    temp.write_bytes(b"partial")
    assert pe.sweep(run, tmp) == [temp] and other_dir.is_dir()


def test_a_symlink_in_place_of_the_temp_file_is_removed_not_followed(tmp_path: Path) -> None:
    run, tmp, temp, staging = _layout(tmp_path)
    target = tmp_path / "target"
    target.write_text("keep")
    with open(temp, "wb") as f:
        pe.begin(run, CID, temp, f.fileno(), staging)
    temp.unlink()
    temp.symlink_to(target)
    assert temp in pe.sweep(run, tmp)
    assert not temp.is_symlink() and target.read_text() == "keep"


def test_a_garbled_record_is_dropped(tmp_path: Path) -> None:
    run, tmp, _temp, _staging = _layout(tmp_path)
    exports = run / pe.EXPORTS_DIR
    exports.mkdir()
    (exports / CID).write_bytes(b"\xff\x00 not json")
    assert pe.sweep(run, tmp) == [] and not (exports / CID).exists()
