"""The layered image's cutter on a hand-made Debian-like tar (no root, no Debian image): which
layer each path goes to along dpkg's records, the rewritten status, the three layers' tars."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from tests.realworld import layered_image
from tests.realworld.layered_image import Cut

STATUS = """\
Package: base-files
Status: install ok installed
Priority: required
Depends: libc6 (>= 2.36)

Package: libc6
Status: install ok installed
Priority: optional

Package: redis-server
Status: install ok installed
Priority: optional
Depends: libjemalloc2, libc6 | libc6.1
Description: a server
 on two lines

Package: libjemalloc2
Status: install ok installed
Priority: optional

Package: procps
Status: install ok installed
Priority: optional
Pre-Depends: libc6

Package: postgresql
Status: install ok installed
Priority: optional
Depends: libc6
"""

LISTS = {
    "base-files": ["/.", "/etc", "/usr", "/usr/bin", "/bin/base-tool", "/etc/os-release"],
    "libc6:amd64": ["/.", "/lib", "/lib/libc.so.6"],
    "redis-server": ["/.", "/etc", "/etc/redis", "/etc/redis/redis.conf", "/usr/bin/redis-server", "/usr/bin/redis-benchmark"],
    "libjemalloc2:amd64": ["/.", "/usr/lib", "/usr/lib/libjemalloc.so.2"],
    "procps": ["/.", "/bin/ps"],
    "postgresql": ["/.", "/etc/postgresql", "/usr/bin/psql"],
}

REDIS_CONF = "bind 127.0.0.1 -::1\n# bind 1.2.3.4\nprotected-mode yes\ndaemonize yes\npidfile /run/redis/redis-server.pid\nlogfile /var/log/redis/redis-server.log\n"


def _debian_like(path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes | None = None, *, link: str = "", hard: bool = False, mode: int = 0o644,
                uid: int = 0) -> None:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.mtime = mode, uid, 1_700_000_000
            if data is None and not link:
                info.type = tarfile.DIRTYPE
            elif link:
                info.type, info.linkname = (tarfile.LNKTYPE if hard else tarfile.SYMTYPE), link
            else:
                info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        for d in ("./", "./etc/", "./usr/", "./usr/bin/", "./usr/lib/", "./var/", "./var/lib/", "./var/lib/dpkg/",
                  "./var/lib/dpkg/info/", "./etc/alternatives/", "./var/lib/mysql/", "./etc/postgresql/"):
            add(d)
        add("./etc/redis/", mode=0o2770, uid=101)
        add("./var/lib/redis/", mode=0o750, uid=101)
        add("./bin", link="usr/bin")
        add("./lib", link="usr/lib")
        add("./var/lib/dpkg/status", STATUS.encode())
        add("./var/lib/dpkg/status-old", STATUS.encode())
        add("./var/lib/dpkg/info/format", b"1\n")
        for package, lines in LISTS.items():
            add(f"./var/lib/dpkg/info/{package}.list", "\n".join(lines).encode() + b"\n")
            add(f"./var/lib/dpkg/info/{package}.md5sums", b"")
        add("./usr/bin/base-tool", b"base")
        add("./usr/lib/libc.so.6", b"libc")
        add("./usr/lib/libjemalloc.so.2", b"jemalloc")
        add("./usr/bin/redis-server", b"redis")
        add("./usr/bin/redis-benchmark", b"bench")
        add("./usr/bin/ps", b"ps")
        add("./usr/bin/psql", b"psql")
        add("./usr/bin/psql-again", link="./usr/bin/psql", hard=True)  # hard link into a left-out file
        add("./usr/bin/base-again", link="./usr/bin/base-tool", hard=True)
        add("./etc/os-release", b"bookworm")
        add("./etc/passwd", b"root:x:0:0::/root:/bin/sh\nredis:x:101:103::/var/lib/redis:/usr/sbin/nologin\n")
        add("./etc/redis/redis.conf", REDIS_CONF.encode(), mode=0o640, uid=101)
        add("./etc/alternatives/psql", link="/usr/bin/psql")
        add("./etc/alternatives/redis", link="/usr/bin/redis-server")
        add("./etc/mtab", link="../proc/self/mounts")
        add("./etc/postgresql/main.conf", b"pg")
        add("./var/lib/mysql/ibdata1", b"innodb")
    return path


def test_each_path_goes_to_the_layer_of_its_packages(tmp_path: Path) -> None:
    with tarfile.open(_debian_like(tmp_path / "debian.tar")) as tar:
        cut = Cut(tar)
        assert cut.base == {"base-files", "libc6"}
        assert cut.server == {"redis-server", "libjemalloc2", "procps"}
        expected = {
            "usr/bin/base-tool": 1, "usr/lib/libc.so.6": 1, "etc/passwd": 1, "bin": 1, "etc/mtab": 1,
            "var/lib/dpkg/info/format": 1, "var/lib/dpkg/info/libc6:amd64.list": 1, "usr/bin": 1, "etc": 1,
            "usr/bin/redis-server": 2, "usr/lib/libjemalloc.so.2": 2, "usr/bin/ps": 2, "etc/redis": 2,
            "etc/redis/redis.conf": 2, "var/lib/redis": 2, "etc/alternatives/redis": 2,
            "var/lib/dpkg/info/redis-server.md5sums": 2,
            "usr/bin/psql": 0, "usr/bin/psql-again": 0, "etc/alternatives/psql": 0, "etc/postgresql/main.conf": 0,
            "var/lib/mysql/ibdata1": 0, "var/lib/dpkg/status-old": 0, "var/lib/dpkg/info/postgresql.list": 0,
        }
        assert {path: cut.layer(path) for path in expected} == expected
        assert "Package: postgresql" not in cut.status_for(cut.base | cut.server).decode()
        assert " on two lines" in cut.status_for(cut.base | cut.server).decode()
        assert "Package: redis-server" not in cut.status_for(cut.base).decode()


def test_the_layout_has_three_layers_with_parents_a_replacement_and_a_whiteout(tmp_path: Path) -> None:
    layout = layered_image.build_redis_layout(_debian_like(tmp_path / "debian.tar"), tmp_path / "oci")
    manifest, config = layered_image.read_layout(layout)
    assert [m["mediaType"] for m in manifest["layers"]] == [layered_image.MEDIA_GZIP] * 2 + [layered_image.MEDIA_TAR]
    assert config["config"]["Entrypoint"] == list(layered_image.ENTRYPOINT) and config["config"]["Cmd"] == ["/etc/redis/redis.conf"]
    blobs = layout / "blobs" / "sha256"
    raws, trees = [], []
    for m, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        data = (blobs / m["digest"][7:]).read_bytes()
        raw = gzip.decompress(data) if m["mediaType"] == layered_image.MEDIA_GZIP else data
        assert diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            trees.append({t.name: t for t in tar.getmembers()})
        raws.append(raw)
    base, server, top = trees
    assert "usr/bin/psql" not in base and "usr/bin/base-again" in base and base["usr/bin/base-again"].islnk()
    assert "Package: redis-server" not in _text(raws[0], "var/lib/dpkg/status")
    assert "Package: redis-server" in _text(raws[1], "var/lib/dpkg/status")
    # the server layer repeats its parents as the image has them (an implicit parent would shadow them)
    assert {"usr", "usr/bin", "usr/lib", "etc", "var/lib/dpkg/info"} <= set(server)
    assert server["etc/redis"].mode == 0o2770 and server["etc/redis"].uid == 101
    assert top["usr/bin/.wh.redis-benchmark"].isfile() and top["etc/redis/redis.conf"].mode == 0o640
    lines = _text(raws[2], "etc/redis/redis.conf").splitlines()
    assert {"bind 0.0.0.0", "protected-mode no", "daemonize no", 'logfile ""', "supervised no", "# bind 1.2.3.4"} <= set(lines)
    assert not any(line.startswith("pidfile ") for line in lines)
    assert json.loads((layout / "index.json").read_text())["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "1"


def _text(tar_bytes: bytes, name: str) -> str:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = tar.extractfile(name)
        assert member is not None, name
        return member.read().decode()
