"""Property tests of the two readers of untrusted input: the checkpoint archive reader
(migrate.archive.read_archive) and the image tarball extractor (runtime.tarsafe.extract).

For every generated input (structured records and tar members with hostile names, kinds, fields
and sizes, then byte-level mutations and truncation):

- the reader returns or raises a typed error (ArchiveError / ImageError), never anything else,
  and never the reader's safety-net message (which would mean a field went unchecked);
- nothing is created or changed outside the extraction dir (a canary beside it, and an
  "outside" dir that absolute names and symlink targets aim at, stay as they were);
- each input finishes within a deadline (hypothesis fails an example slower than DEADLINE_MS)
  and raises the process's peak memory (ru_maxrss) by less than MAX_INPUT_RSS; over the whole
  run it grows by less than MAX_RSS_GROWTH (glibc keeps freed chunk buffers of the reader's
  threads in per-thread arenas, so the total is not the sum of the inputs).

``PYMIGRATE_FUZZ_EXAMPLES`` sets the number of inputs per reader: 300 each in the default unit
run (~15 s), 5,000 each (10,000 in all, 3-6 min on a busy 2-core VM) in scripts/test.sh.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import resource
import shutil
import tarfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrate.archive import format as fmt
from migrate.errors import ArchiveError
from migrate.archive import read_archive
from runtime import tarsafe
from runtime.errors import ImageError
from runtime.extract_limits import ExtractLimits
from tests.fakes.hostile_archives import Crafter

EXAMPLES = int(os.environ.get("PYMIGRATE_FUZZ_EXAMPLES", "300"))
DEADLINE_MS = 5000
MAX_INPUT_RSS = 256 << 20  # a data chunk is at most 64 MiB raw, a few are in flight
MAX_RSS_GROWTH = 2 << 30
LIMITS = ExtractLimits(max_depth=6, max_name_bytes=300, max_members=40, max_member_bytes=1 << 20,
                       max_total_bytes=4 << 20, max_hole_bytes=2 << 20)
SAFETY_NET = "unexpected"  # migrate.archive: the message of an error no check caught first

WORK = Path(os.environ.get("PYMIGRATE_FUZZ_DIR", "/tmp")) / f"pm-fuzz-{os.getpid()}"
OUTSIDE = WORK / "outside"  # absolute names and link targets aim here: it must stay empty

_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=DEADLINE_MS,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# -- generators ------------------------------------------------------------------------------------
# Hypothesis draws one seed per input; a random.Random built from it makes the input. Drawing
# every field through hypothesis costs ~50 ms per input here, which 10,000 inputs cannot afford;
# a failing seed still reproduces (and hypothesis still shrinks the seed and the mutation).

NAMES = [
    "images", "images/inventory.img", "images/core-1.img", "images/pages-1.img", "images/cpuinfo-check.log",
    "images/restore.log", "images/sub/x.img", "images/../x.img", "upper", "upper/a", "upper/a/b", "upper/a/b/c",
    "upper/l", "upper/l/x", "upper/h", "upper/a/../../x", "../x", "/x", f"{OUTSIDE}/abs", "upper//a", "upper/./a",
    "", "x", "upper.img.map", "upper.img.data", "criu-work", "upper/\ud800", "upper/\udcff", "upper/" + "n" * 256, "upper/" + "d/" * 8 + "deep",
    "upper/a\x00b",
]
TARGETS = [str(OUTSIDE), f"{OUTSIDE}/t", "../../outside", "../" * 6 + "outside", "a", "upper/a", "/etc/passwd", "",
           "b/../../..", "images/inventory.img", "upper/l", "../.."]
KINDS = sorted(fmt.KINDS) + ["weird", ""]
ODD_INTS = [-1, 0, 1, 0o7777, 0o10000, 1 << 31, 1 << 32, 1 << 40, 1 << 62, 1 << 63, 1 << 64, 1 << 80, -(1 << 70)]


def _text(rng: random.Random, n: int = 8) -> str:
    return "".join(rng.choice("ab/.\x00\udcff\ud800-_é") for _ in range(rng.randint(0, n)))


def _scalar(rng: random.Random) -> object:
    return rng.choice([None, True, False, rng.choice(ODD_INTS), rng.random() * 1e300, _text(rng), float("inf")])


def _value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.randint(0, 9)
    if depth < 3 and roll == 0:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 3 and roll == 1:
        return {_text(rng, 4): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return _scalar(rng)


def _name(rng: random.Random) -> str:
    if rng.randint(0, 2) == 0:  # a plausible upper-layer path
        return "upper/" + "/".join(rng.choice(["a", "b", "l", "h", ".."]) for _ in range(rng.randint(0, 4)))
    return rng.choice(NAMES) if rng.randint(0, 5) else _text(rng, 16)


def _entry(rng: random.Random) -> dict:
    def pick(good: list, bad: list = ODD_INTS) -> object:
        return rng.choice(bad) if rng.randint(0, 15) == 0 else rng.choice(good)

    meta: dict = {"name": _name(rng), "kind": pick(KINDS, KINDS), "mode": pick([0o644, 0o755, 0o4755, 0o1777]),
                  "uid": pick([0, 1000]), "gid": pick([0, 1000]), "atime_ns": pick([0, 10**18]), "mtime_ns": pick([0, 10**18])}
    if rng.randint(0, 1):
        meta["target"] = rng.choice(TARGETS) if rng.randint(0, 3) else _value(rng)
    if rng.randint(0, 4) == 0:
        meta["rdev"] = rng.choice([[1, 3], [0, 0], [1 << 33, 1], [-1, 0], [1], _value(rng)])
    if rng.randint(0, 4) == 0:
        meta["xattrs"] = rng.choice([{"user.a": "eQ=="}, {"trusted.overlay.opaque": "eQ=="}, {"user.a": "***"},
                                     {"": "eQ=="}, {"user.\x00": "eQ=="}, {"user.a": 7}, _value(rng)])
    for key in rng.sample(sorted(meta), rng.choice([0] * 12 + [1, 2])):
        meta[key] = _value(rng)  # a field of the wrong type
    if rng.randint(0, 19) == 0:
        del meta[rng.choice(sorted(meta))]
    return meta


def _chunked_file(rng: random.Random, c: Crafter) -> None:
    """A file member sent in chunks with holes between them (some huge, some zstd frames of
    zeros), closed by an end record whose size and sha256 are right or wrong."""
    c.entry(_name(rng) if rng.randint(0, 3) else "images/pages-1.img", "file")
    h, end = hashlib.sha256(), 0
    for _ in range(rng.randint(0, 3)):
        offset = min(end + rng.choice([0, 0, 1, 4096, 1 << 20, 3 << 20, 1 << 40, 1 << 63]), (1 << 64) - 1)
        raw = bytes(rng.choice([1, 4096, 1 << 20, 2 << 20])) if rng.randint(0, 2) == 0 else rng.randbytes(rng.randint(1, 64))
        if raw.count(0) == len(raw) and rng.randint(0, 1):
            c.zstd_data(raw, offset)
        else:
            c.record(fmt.REC_DATA, raw, offset=offset)
        if offset < 1 << 30:
            h.update(bytes(offset - end))
            h.update(raw)
        end = offset + len(raw)
    tail = rng.choice([0, 0, 10, 1 << 21, 1 << 40, 1 << 63])
    if end + tail < 1 << 30:
        h.update(bytes(tail))
    digest = h.hexdigest() if rng.randint(0, 3) else rng.choice(["0" * 64, _text(rng, 64)])
    c.end(end + tail if rng.randint(0, 5) else rng.choice([0, end - 1, _value(rng)]), digest)  # type: ignore[arg-type]


def make_archive(rng: random.Random) -> bytes:
    c = Crafter(version=rng.choice([fmt.FORMAT_VERSION] * 30 + [0, 2]))
    if rng.randint(0, 30):
        keys = ["checkpoint_id", "devices"] + (["format_version"] if rng.randint(0, 20) == 0 else [])
        c.manifest(**{k: _value(rng) for k in rng.sample(keys, rng.randint(0, 1))})
    for _ in range(rng.randint(0, 8)):
        step = rng.choice(["entry"] * 4 + ["file"] * 2 + ["chunked"] * 3 + ["stray"])
        if step == "entry":
            meta = _entry(rng)
            c.json(fmt.REC_ENTRY, meta)
            c.members.append({"name": meta.get("name"), "kind": meta.get("kind"), "size_bytes": 0, "sha256": None})
        elif step == "file":
            c.file(_name(rng), rng.randbytes(rng.randint(0, 64)))
        elif step == "chunked":
            _chunked_file(rng, c)
        else:
            c.record(rng.choice([fmt.REC_MANIFEST, fmt.REC_ENTRY, fmt.REC_DATA, fmt.REC_END, fmt.REC_TRAILER, 0, 255]),
                     rng.randbytes(rng.randint(0, 40)), flags=rng.choice([0, 0, fmt.FLAG_ZSTD, 2]))
    if rng.randint(0, 5):
        extra = {k: _value(rng) for k in rng.sample(["format_version", "dump_stats"], rng.randint(0, 1))}
        if rng.randint(0, 3) == 0:
            c.json(fmt.REC_TRAILER, {"members": _value(rng), "trailer": extra})
        else:
            c.trailer(**extra)
    return c.getvalue()


TAR_TYPES = [tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE,
             tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.CONTTYPE, b"Z"]
PAX_KEYS = ["mtime", "uid", "gid", "size", "path", "linkpath", "GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.name",
            "GNU.sparse.realsize", "GNU.sparse.size", "GNU.sparse.map", "GNU.sparse.numblocks", "GNU.sparse.offset",
            "GNU.sparse.numbytes", "hdrcharset"]
PAX_VALUES = ["0", "1", "-1", "1e300", "nan", "99999999999999999999", "0,10,20,5", "1,2,3", "x", "../escape",
              str(OUTSIDE), "", "1.0", "inf", "BINARY", "3000000", "1048576"]
TAR_NAMES = ["a", "a/b", "a/b/c", "l", "l/x", "../x", "/x", f"{OUTSIDE}/abs", "./a", "a/../../x", ".", "d/" * 8 + "deep",
             "n" * 300, "x\udcff", "GNUSparseFile.0/s"]


def make_tarball(rng: random.Random) -> bytes:
    buf = io.BytesIO()
    tar_format = rng.choice([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
    try:
        with tarfile.open(fileobj=buf, mode="w", format=tar_format) as tar:
            for _ in range(rng.randint(0, 6)):
                info = tarfile.TarInfo(rng.choice(TAR_NAMES) if rng.randint(0, 4) else _text(rng) or "z")
                info.type = rng.choice(TAR_TYPES)
                info.linkname = rng.choice(TARGETS)
                info.mode = rng.randint(0, 0o7777)
                info.mtime = rng.randint(0, 1 << 33)
                data = rng.randbytes(rng.randint(0, 64)) if info.type in (tarfile.REGTYPE, tarfile.CONTTYPE) else b""
                info.size = len(data)
                if tar_format == tarfile.PAX_FORMAT and rng.randint(0, 1):
                    info.pax_headers = {rng.choice(PAX_KEYS): rng.choice(PAX_VALUES) for _ in range(rng.randint(1, 4))}
                tar.addfile(info, io.BytesIO(data))
    except (ValueError, tarfile.TarError, UnicodeError, OverflowError):
        pass  # tarfile refused to write this header: keep what it wrote so far
    return buf.getvalue()


@st.composite
def inputs(draw: st.DrawFn, make: object) -> bytes:
    data = make(random.Random(draw(st.integers(0, 2**64 - 1))))  # type: ignore[operator]
    how = draw(st.integers(0, 9))
    if how == 0 and data:  # flip a byte
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    elif how == 1:  # cut anywhere
        data = data[: draw(st.integers(0, len(data)))]
    elif how == 2:  # junk after the end
        data = data + draw(st.binary(min_size=1, max_size=16))
    wrap = draw(st.integers(0, 7)) if make is make_tarball else 9
    if wrap == 0:
        return gzip.compress(data)
    if wrap == 1:
        return zstandard.ZstdCompressor().compress(data)
    return data


# -- the properties -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work() -> object:
    shutil.rmtree(WORK, ignore_errors=True)
    OUTSIDE.mkdir(parents=True)
    (WORK / "canary").write_text("keep")
    rss_before = _peak_rss()
    yield WORK
    shutil.rmtree(WORK, ignore_errors=True)
    grown = _peak_rss() - rss_before
    assert grown < MAX_RSS_GROWTH, f"peak memory grew by {grown >> 20} MiB"


def _check_contained(work: Path) -> None:
    assert sorted(p.name for p in work.iterdir()) == ["canary", "outside"], sorted(p.name for p in work.iterdir())
    assert (work / "canary").read_text() == "keep"
    assert list(OUTSIDE.iterdir()) == []


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10


def _check_input_memory(before: int) -> None:
    grown = _peak_rss() - before
    assert grown < MAX_INPUT_RSS, f"one input raised peak memory by {grown >> 20} MiB"


def _fresh(work: Path) -> Path:
    dest = work / "dest"
    tarsafe.rmtree(dest)
    dest.mkdir()
    return dest


@_SETTINGS
@given(data=inputs(make_archive))
def test_archive_reader_never_escapes_and_raises_only_typed_errors(work: Path, data: bytes) -> None:
    dest = _fresh(work)
    before = _peak_rss()
    try:
        read_archive(io.BytesIO(data), dest, limits=LIMITS, allow_devices=False)
    except ArchiveError as exc:
        assert SAFETY_NET not in str(exc), f"a field went unchecked: {exc!r} from {exc.__cause__!r}"
    finally:
        tarsafe.rmtree(dest)
    _check_input_memory(before)
    _check_contained(work)


@_SETTINGS
@given(data=inputs(make_tarball))
def test_tar_extractor_never_escapes_and_raises_only_typed_errors(work: Path, data: bytes) -> None:
    dest = _fresh(work)
    before = _peak_rss()
    try:
        tarsafe.extract(io.BytesIO(data), dest, source="fuzz.tar", limits=LIMITS)
    except ImageError:
        pass
    finally:
        tarsafe.rmtree(dest)
    _check_input_memory(before)
    _check_contained(work)
