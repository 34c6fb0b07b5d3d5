"""Debian bookworm with Redis as a real OCI image of three layers, built from the suite's rootfs.

``redis_layout()`` returns an OCI image layout directory (tag ``1``) cut out of the cached
Debian tar (tests/realworld/debian_image.py) along dpkg's own records, the way a Dockerfile's
steps would have made it:

1. **base** (gzip): the packages ``debootstrap --variant=minbase`` installs (Priority required or
   Essential, with their Depends/Pre-Depends), their files as dpkg lists them, the files no
   package owns (passwd, ld.so.cache, ...) and dpkg's status with only those packages;
2. **redis** (gzip): the files of redis-server and procps (``ps``, which the lab's user check
   runs) and of the dependencies the base lacks, redis's own data and log dirs, and dpkg's
   status with them too (replacing the base's: a file of a lower layer overwritten);
3. **config** (plain tar, ~100 KiB): /etc/redis/redis.conf replaced by the container settings
   (bind 0.0.0.0, protected-mode no, foreground, log to stdout, no pid file) and
   /usr/bin/redis-benchmark deleted by a whiteout (``usr/bin/.wh.redis-benchmark``).

Left out: every other server of the suite's image with its data (PostgreSQL's cluster, MariaDB's
data dir) and the symlinks that would dangle without them (alternatives, rc.d, systemd wants).
Kept as they are: the system users of every server (/etc/passwd comes from maintainer
scripts, not from a package's file list) and dpkg's other records. bookworm is merged-/usr:
dpkg lists ``/lib/x``, the tar holds ``usr/lib/x``.

The image's config starts the server with no command given: Entrypoint ``setpriv --reuid=redis
--regid=redis --init-groups -- redis-server`` (util-linux's setpriv drops to redis and execs, so
redis-server is the container's init, running as redis), Cmd ``/etc/redis/redis.conf``; Env
PATH, WorkingDir /var/lib/redis, ExposedPorts 6379/tcp. No ``User``: the image drops
privileges itself.

Cached as ``CACHE_DIR/debian-redis-oci-<key>/`` (key: the Debian tar's key, this module's
source and ``BUILDER_VERSION``), made in a temp dir and renamed, under an exclusive flock; built
from nothing (Debian tar included) when absent. Building takes ~30 s (one read of the Debian tar,
gzip of ~100 MiB); layer digests are reproducible (gzip mtime 0, the tar's own metadata).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import platform
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tests.realworld import debian_image

BUILDER_VERSION = "1"
TAG = "1"
SERVER_PACKAGES = ("redis-server", "procps")
SERVER_DIRS = ("var/lib/redis", "var/log/redis")  # made by redis-server's maintainer scripts, owned by none
# what the left-out packages' maintainer scripts (and make-debian-image.sh) made below directories
# the base owns, so that no package's list names it: their data and run dirs, configs, caches
UNOWNED_DROP = ("var/lib/mysql", "run/mysqld", "run/postgresql", "var/cache/postgresql", "var/www", "var/lib/python",
                "etc/memcached.conf", "etc/python3", "usr/local/lib/python3.11", "etc/apt/apt.conf.d/02autoremove-postgresql")
WHITED_OUT = "usr/bin/redis-benchmark"  # layer 3 deletes it
REDIS_CONF = "etc/redis/redis.conf"
MERGED_USR = ("bin", "sbin", "lib", "lib64")
DPKG_INFO = "var/lib/dpkg/info/"
DPKG_STATUS = "var/lib/dpkg/status"
ENTRYPOINT = ("setpriv", "--reuid=redis", "--regid=redis", "--init-groups", "--", "redis-server")
CMD = ("/etc/redis/redis.conf",)
REDIS_PORT = 6379
MEDIA_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TAR = "application/vnd.oci.image.layer.v1.tar"
_CHUNK = 1 << 20


# --- an OCI image layout, written blob by blob -----------------------------------------------------


@dataclass(frozen=True)
class Layer:
    digest: str  # the blob's (what the manifest lists)
    size: int  # the blob's bytes
    media_type: str
    diff_id: str  # sha256 of the uncompressed tar (the config's rootfs.diff_ids)
    created_by: str


class LayoutWriter:
    """Blobs into ``out/blobs/sha256``; ``finish`` writes the config, manifest and index."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.blobs = out / "blobs" / "sha256"
        self.blobs.mkdir(parents=True)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        hexd = hashlib.sha256(data).hexdigest()
        (self.blobs / hexd).write_bytes(data)
        return f"sha256:{hexd}", len(data)

    def add_layer(self, tar_path: Path, *, gzip_level: int | None, created_by: str) -> Layer:
        """Store the tar at ``tar_path`` as a layer blob (gzip'ed unless ``gzip_level`` is None); the tar is removed."""
        raw = hashlib.sha256()
        tmp = self.blobs / ".incoming"
        with open(tar_path, "rb") as src, open(tmp, "wb") as dst:
            sink = gzip.GzipFile(fileobj=dst, mode="wb", compresslevel=gzip_level, mtime=0) if gzip_level is not None else dst
            while chunk := src.read(_CHUNK):
                raw.update(chunk)
                sink.write(chunk)
            if sink is not dst:
                sink.close()
        blob_hex = _file_sha256(tmp)
        tmp.rename(self.blobs / blob_hex)
        tar_path.unlink()
        return Layer(f"sha256:{blob_hex}", (self.blobs / blob_hex).stat().st_size,
                     MEDIA_TAR if gzip_level is None else MEDIA_GZIP, f"sha256:{raw.hexdigest()}", created_by)

    def adopt(self, layout: Path, layer: Layer) -> Layer:
        """Take ``layer``'s blob from another layout (a hard link, a copy across file systems)."""
        src, dst = layout / "blobs" / "sha256" / layer.digest[7:], self.blobs / layer.digest[7:]
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        return layer

    def finish(self, layers: list[Layer], run_config: dict, tag: str = TAG) -> Path:
        config = {
            "created": "2026-01-01T00:00:00Z",
            "architecture": oci_architecture(), "os": "linux",
            "config": run_config,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created": "2026-01-01T00:00:00Z", "created_by": layer.created_by} for layer in layers],
        }
        config_digest, config_size = self.put_bytes(json.dumps(config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size} for layer in layers],
        }
        manifest_digest, manifest_size = self.put_bytes(json.dumps(manifest, sort_keys=True).encode())
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}
        (self.out / "index.json").write_text(json.dumps(index))
        (self.out / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        return self.out


def oci_architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_layout(layout: Path) -> tuple[dict, dict]:
    """(manifest, config) of the one image in ``layout``."""
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    return manifest, json.loads((blobs / manifest["config"]["digest"][7:]).read_text())


def layers_of(layout: Path) -> list[Layer]:
    """The layers of the one image in ``layout``, lowest first."""
    manifest, config = read_layout(layout)
    history = [h.get("created_by", "") for h in config.get("history", []) if not h.get("empty_layer")]
    return [Layer(m["digest"], m["size"], m["mediaType"], diff_id, history[i] if i < len(history) else "")
            for i, (m, diff_id) in enumerate(zip(manifest["layers"], config["rootfs"]["diff_ids"]))]


# --- cutting the Debian tar along dpkg's records ---------------------------------------------------


def _tar_path(name: str) -> str:
    """A member name without its leading ./ or / (the root itself: "")."""
    p = name.removeprefix("./").strip("/")
    return "" if p == "." else p


def _canon(path: str) -> str:
    """A path dpkg lists or a symlink names, as the tar holds it: merged-/usr applied."""
    p = _tar_path(path)
    top, _, _ = p.partition("/")
    return f"usr/{p}" if top in MERGED_USR else p


def parse_status(text: str) -> dict[str, str]:
    """dpkg's status file: package name -> its paragraph (text)."""
    paragraphs = {}
    for para in text.split("\n\n"):
        m = re.search(r"^Package: (\S+)$", para, re.M)
        if m:
            paragraphs[m.group(1)] = para.strip("\n")
    return paragraphs


def _field(para: str, name: str) -> str:
    m = re.search(rf"^{name}: (.*(?:\n[ \t].*)*)", para, re.M)
    return m.group(1).replace("\n", " ") if m else ""


def package_sets(status: dict[str, str], server: Iterable[str]) -> tuple[set[str], set[str]]:
    """(base, server): minbase's packages with their dependencies; ``server``'s closure minus base."""
    provides: dict[str, str] = {}
    for name, para in status.items():
        for virtual in _field(para, "Provides").split(","):
            provides.setdefault(virtual.strip().split(" ")[0], name)

    def depends(name: str) -> Iterable[str]:
        para = status[name]
        for field in ("Pre-Depends", "Depends"):
            for alternatives in filter(None, (a.strip() for a in _field(para, field).split(","))):
                for alt in alternatives.split("|"):
                    dep = alt.strip().split(" ")[0].split(":")[0]
                    found = dep if dep in status else provides.get(dep)
                    if found:
                        yield found
                        break

    def closure(seeds: Iterable[str]) -> set[str]:
        done: set[str] = set()
        todo = list(seeds)
        while todo:
            name = todo.pop()
            if name not in done:
                done.add(name)
                todo.extend(depends(name))
        return done

    base = closure(n for n, p in status.items() if _field(p, "Priority") == "required" or _field(p, "Essential") == "yes")
    missing = [s for s in server if s not in status]
    if missing:
        raise ValueError(f"the Debian image has no package {missing}")
    return base, closure([*base, *server]) - base


class Cut:
    """Which layer (1 base, 2 server, 0 left out) each path of the Debian tar goes to."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.members = {_tar_path(m.name): m for m in tar.getmembers() if _tar_path(m.name)}
        status_member = tar.extractfile(self.members[DPKG_STATUS])
        assert status_member is not None
        self.status = parse_status(status_member.read().decode())
        self.base, self.server = package_sets(self.status, SERVER_PACKAGES)
        self.known = set(self.status)
        self.owners: dict[str, set[str]] = {}
        for path, member in self.members.items():
            if path.startswith(DPKG_INFO) and path.endswith(".list"):
                listing = tar.extractfile(member)
                assert listing is not None
                package = posixpath.basename(path)[: -len(".list")].split(":")[0]
                for line in listing.read().decode().splitlines():
                    if line and line != "/.":
                        self.owners.setdefault(_canon(line), set()).add(package)
        self._layer: dict[str, int] = {}

    def _of_packages(self, packages: set[str]) -> int:
        if packages & self.base or not packages & self.known:
            return 1  # a base package's, or no package's dpkg knows (var/lib/dpkg/info/format)
        return 2 if packages & self.server else 0

    def layer(self, path: str, depth: int = 0) -> int:
        if path not in self._layer:
            self._layer[path] = self._decide(path, depth)
        return self._layer[path]

    def _decide(self, path: str, depth: int) -> int:
        if path == DPKG_STATUS:
            return 1  # and again in layer 2: written per layer (status_for)
        if path == f"{DPKG_STATUS}-old":
            return 0  # the status before the last install: all of the suite's packages
        if path.startswith(DPKG_INFO):
            return self._of_packages({posixpath.basename(path).rsplit(".", 1)[0].split(":")[0]})
        if path in self.owners:
            return self._of_packages(self.owners[path])
        if any(path == d or path.startswith(d + "/") for d in SERVER_DIRS):
            return 2
        if any(path == d or path.startswith(d + "/") for d in UNOWNED_DROP):
            return 0
        member = self.members.get(path)
        if member is not None and member.islnk():
            return self.layer(_tar_path(member.linkname), depth + 1)  # an unowned hard link: with its file
        if member is not None and member.issym() and depth < 16:
            # an unowned symlink (alternatives, rc.d, systemd wants) goes with its target
            target = _canon(posixpath.normpath(member.linkname if member.linkname.startswith("/")
                                               else posixpath.join(posixpath.dirname(path), member.linkname)))
            if target in self.members:
                return self.layer(target, depth + 1)
            return 1  # dangling in the full image too (/etc/mtab -> /proc/self/mounts): kept
        # unowned: with its nearest owned ancestor (pg_createcluster's files below /etc/postgresql)
        parent = posixpath.dirname(path)
        while parent and parent not in self.owners:
            parent = posixpath.dirname(parent)
        return self._of_packages(self.owners[parent]) if parent else 1

    def status_for(self, packages: set[str]) -> bytes:
        return ("\n\n".join(p for n, p in self.status.items() if n in packages) + "\n").encode()


def _container_redis_conf(original: str) -> str:
    settings = {"bind": "bind 0.0.0.0", "protected-mode": "protected-mode no", "daemonize": "daemonize no",
                "pidfile": "# pidfile: none (pymigrate test image)", "logfile": 'logfile ""'}
    out = [settings.get(line.split(" ", 1)[0], line) if line and not line.startswith("#") else line
           for line in original.splitlines()]
    return "\n".join(out) + "\n\n# pymigrate test image: in the foreground, no supervisor\nsupervised no\n"


def build_redis_layout(debian_tar: Path, out: Path) -> Path:
    """Cut ``debian_tar`` into the three layers of the module docstring; an OCI layout at ``out``."""
    writer = LayoutWriter(out)
    work = out / ".work"
    work.mkdir()
    layers = []
    with tarfile.open(debian_tar) as src:
        cut = Cut(src)
        for number, created_by in ((1, "debootstrap --variant=minbase bookworm"),
                                   (2, f"apt-get install --no-install-recommends {' '.join(SERVER_PACKAGES)}")):
            path = work / f"layer{number}.tar"
            with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as dst:
                _write_layer(src, dst, cut, number)
            layers.append(writer.add_layer(path, gzip_level=6, created_by=created_by))
        conf_member = cut.members[REDIS_CONF]
        conf_file = src.extractfile(conf_member)
        assert conf_file is not None
        conf = _container_redis_conf(conf_file.read().decode()).encode()
    path = work / "layer3.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as dst:
        emitted: set[str] = set()
        _write_parents(dst, cut, REDIS_CONF, emitted)
        _write_parents(dst, cut, WHITED_OUT, emitted)
        replaced = tarfile.TarInfo(REDIS_CONF)
        replaced.uid, replaced.gid, replaced.mode = conf_member.uid, conf_member.gid, conf_member.mode
        replaced.uname, replaced.gname, replaced.mtime, replaced.size = "", "", conf_member.mtime, len(conf)
        dst.addfile(replaced, _BytesReader(conf))
        whiteout = tarfile.TarInfo(posixpath.join(posixpath.dirname(WHITED_OUT), ".wh." + posixpath.basename(WHITED_OUT)))
        whiteout.mtime = conf_member.mtime
        dst.addfile(whiteout)
    layers.append(writer.add_layer(path, gzip_level=None, created_by=f"redis.conf for containers; rm /{WHITED_OUT}"))
    work.rmdir()
    run_config = {
        "Entrypoint": list(ENTRYPOINT), "Cmd": list(CMD),
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "WorkingDir": "/var/lib/redis", "ExposedPorts": {f"{REDIS_PORT}/tcp": {}},
        "Labels": {"org.opencontainers.image.title": "pymigrate realworld redis"},
    }
    return writer.finish(layers, run_config)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.at + n
        chunk, self.at = self.data[self.at:end], min(end, len(self.data))
        return chunk


def _write_layer(src: tarfile.TarFile, dst: tarfile.TarFile, cut: Cut, number: int) -> None:
    emitted: set[str] = set()
    for path, member in cut.members.items():
        if path == DPKG_STATUS:  # in both layers: the packages installed up to this one
            _write_parents(dst, cut, path, emitted)
            data = cut.status_for(cut.base if number == 1 else cut.base | cut.server)
            info = _copy_info(member, path)
            info.size = len(data)
            dst.addfile(info, _BytesReader(data))
            continue
        if cut.layer(path) != number:
            continue
        _write_parents(dst, cut, path, emitted)
        emitted.add(path)
        if member.islnk() and cut.layer(_tar_path(member.linkname)) != number:
            info = _copy_info(member, path)  # its target is in another layer: a copy of its own
            info.type, info.linkname, info.size = tarfile.REGTYPE, "", src.getmember(member.linkname).size
            dst.addfile(info, src.extractfile(member))
            continue
        info = _copy_info(member, path)
        if member.islnk():
            info.linkname = _tar_path(member.linkname)
        dst.addfile(info, src.extractfile(member) if member.isreg() else None)


def _write_parents(dst: tarfile.TarFile, cut: Cut, path: str, emitted: set[str]) -> None:
    """The directories above ``path`` as the full image has them, when this layer has not
    written them yet: a layer's implicit parent would shadow the lower one's owner and mode."""
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        parent = "/".join(parts[:i])
        if parent not in emitted:
            dst.addfile(_copy_info(cut.members[parent], parent))
            emitted.add(parent)


def _copy_info(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    for attr in ("mode", "uid", "gid", "mtime", "type", "linkname", "uname", "gname", "size", "devmajor", "devminor"):
        setattr(info, attr, getattr(member, attr))
    return info


# --- the cache ---------------------------------------------------------------------------------


def layout_key() -> str:
    digest = hashlib.sha256(BUILDER_VERSION.encode() + b"\0" + debian_image.image_key().encode() + b"\0"
                            + Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def cached_layout() -> Path:
    return debian_image.cache_dir() / f"debian-redis-oci-{layout_key()}"


def redis_layout() -> tuple[Path, float | None]:
    """The cached layout, building it (and the Debian tar) first when absent; (path, build seconds or None)."""
    layout = cached_layout()
    if (layout / "index.json").exists():
        return layout, None
    layout.parent.mkdir(parents=True, exist_ok=True)
    with open(layout.parent / "debian-redis-oci.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building: wait for it
        if (layout / "index.json").exists():
            return layout, None
        started = time.monotonic()
        tar, _ = debian_image.debian_image_tar()
        tmp = Path(tempfile.mkdtemp(prefix=".debian-redis-oci.", dir=layout.parent))
        try:
            build_redis_layout(tar, tmp / "oci")
            os.chmod(tmp / "oci", 0o755)
            (tmp / "oci").rename(layout)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in layout.parent.glob("debian-redis-oci-*"):
            if old != layout:
                shutil.rmtree(old, ignore_errors=True)
        return layout, time.monotonic() - started
