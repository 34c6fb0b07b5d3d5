#!/usr/bin/env python3
"""Benchmark (not a test): images from a registry, pymigrate against podman, layered against flat.

One local registry (Debian's docker-registry on 127.0.0.1, storage under the work dir) serves two
images with the same tree and config, pushed with skopeo:

- ``bench/layered:1``, five layers, ~100 MiB unpacked: the real-server suite's Debian bookworm +
  Redis image (tests/realworld/layered_image.py: base system, the server's packages, a config
  layer with a whiteout; cached under /var/cache/pymigrate-tests), plus an application layer of
  random-content files (incompressible, ``--app-mib``) and a small layer that adds a config file
  and deletes one of the application's files by a whiteout;
- ``bench/flat:1``, the same tree as ONE layer (pymigrate's own export of the layered image,
  gzip'ed), so its tree digest must equal the layered one's (checked).

Parts, each timed ``--runs`` times, interleaved so every side sees the same machine state:

- ``pull``: ``pymigrate image pull`` and ``podman pull`` of each image, every run into a cold store
  (a fresh pymigrate state root; a fresh podman ``--root``/``--runroot`` with the overlay driver,
  so the host's podman storage is untouched), wall time of the command; and, for reference,
  ``skopeo copy docker://REF oci:DIR`` alone (the download pymigrate's pull starts with: the rest
  of its time is verifying and unpacking the layers);
- ``run``: ``pymigrate run -d --network none IMAGE`` with no command (the image's own
  Entrypoint/Cmd: redis-server as redis) on the five-layer image and on the flat one, from one
  store that holds both; wall time of the command, ``rm -f`` not timed.

- ``migrate``: the bytes a migration puts on the wire for the image (``migrate --json`` stats
  ``image_bytes``, ``image_layers_sent``; with ``total_ms`` and ``frozen_ms``) when the target has
  none, some or all of its layers. Four hosts (tests/integration/hosts.py: network namespaces on a
  bridge, as the migration tests use them), the images loaded from the layouts above: a holds
  layered:1, b flat:1, c the flat tree imported as a rootfs tarball (stored without layers: what
  an unprivileged store or ``image import`` keeps), d is the target (a daemon over TCP,
  ``--insecure``). Every container runs the image's redis-server with ``--network none`` and moves
  cold from its source's CLI. Per run, into d: layered:1 with d empty (none of the 5 layers); a
  second container of it (all); d emptied (``rm -f``, ``image prune --all``) and sibling:1 loaded
  (the suite's Debian + Redis image: the layered image's 3 lower layers) before a third (some);
  d emptied before flat:1 (one layer blob in an OCI archive) and the flat tree (one raw tar).
  Each source holds one image: flat:1, the flat tree and layered:1 have the same tree digest,
  and a store keeps one record per digest (whichever came first), so on one host they would be
  the same image; a target holding that digest in any form takes no image at all.

What it changes on the host: a temporary work dir (default a mkdtemp in /var/tmp; the registry's
storage, the layouts, the state roots and podman roots), one docker-registry process on a free
port of 127.0.0.1, the containers it starts, and for ``migrate`` a bridge and four network
namespaces with their veths and one daemon; all removed at the end (podman's overlay mounts
under its roots are unmounted first). skopeo and podman share the host's blob-info cache
(/var/lib/containers/cache), which records digests only.

Usage: scripts/bench_images.py [--runs 3] [--parts pull,run,migrate] [--app-mib 8] [--json] [--keep]
       (also ``scripts/bench.py images ...``)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.integration.test_image_registry import Registry, skopeo_push, start_registry  # noqa: E402
from tests.realworld.layered_image import LayoutWriter, layers_of, read_layout, redis_layout  # noqa: E402

IMAGES = ("layered", "flat")
APP_DIR = "opt/app"
APP_FILE_BYTES = 256 * 1024


def pymigrate_cmd(root: Path) -> list[str]:
    exe = REPO / ".venv" / "bin" / "pymigrate"
    return [*([str(exe)] if exe.exists() else [sys.executable, "-m", "migrate"]), "--root", str(root)]


def timed(argv: list[str]) -> float:
    with open(os.devnull, "rb") as null_in, tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        r = subprocess.run(argv, stdin=null_in, stdout=out, stderr=subprocess.STDOUT)
        elapsed = time.perf_counter() - t0
        if r.returncode != 0:
            out.seek(0)
            raise SystemExit(f"bench: {' '.join(argv)} failed ({r.returncode}): {out.read().decode().strip()[-2000:]}")
    return elapsed


def stats_s(samples: list[float]) -> dict[str, Any]:
    return {"median_s": round(statistics.median(samples), 3), "min_s": round(min(samples), 3),
            "max_s": round(max(samples), 3), "samples_s": [round(s, 3) for s in samples]}


# --- the images --------------------------------------------------------------------------------


def _tar_dir(dst: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
    dst.addfile(info)


def _tar_file(dst: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
    dst.addfile(info, io.BytesIO(data))


def build_layered(out: Path, app_mib: int) -> Path:
    """The suite's three layers + an application layer of random files + a config/whiteout layer."""
    base = redis_layout()[0]
    _, config = read_layout(base)
    writer = LayoutWriter(out)
    layers = [writer.adopt(base, layer) for layer in layers_of(base)]
    app = out / "app.tar"
    with tarfile.open(app, "w", format=tarfile.PAX_FORMAT) as dst:
        for part in ("opt", APP_DIR):
            _tar_dir(dst, part)
        for i in range(app_mib * (1 << 20) // APP_FILE_BYTES):
            _tar_file(dst, f"{APP_DIR}/data-{i:04d}.bin", os.urandom(APP_FILE_BYTES))
    layers.append(writer.add_layer(app, gzip_level=1, created_by=f"COPY app/ /{APP_DIR}/ ({app_mib} MiB random)"))
    conf = out / "conf.tar"
    with tarfile.open(conf, "w", format=tarfile.PAX_FORMAT) as dst:
        for part in ("opt", APP_DIR):
            _tar_dir(dst, part)
        _tar_file(dst, f"{APP_DIR}/app.conf", b"mode = bench\n")
        _tar_file(dst, f"{APP_DIR}/.wh.data-0000.bin", b"")
    layers.append(writer.add_layer(conf, gzip_level=6, created_by=f"app.conf; rm /{APP_DIR}/data-0000.bin"))
    return writer.finish(layers, config["config"])


def build_flat(layered: Path, out: Path, scratch_root: Path) -> tuple[Path, str]:
    """``layered`` as one layer (loaded into a scratch store, exported); (layout, tree digest)."""
    from runtime.config import Paths
    from runtime.image_store import ImageStore

    store = ImageStore(Paths(scratch_root))
    image = store.load_archive(layered, name="layered:1")
    _, config = read_layout(layered)
    writer = LayoutWriter(out)
    flat_tar = out / "flat.tar"
    with open(flat_tar, "wb") as sink:
        store.export_stream("layered:1", sink)
    layer = writer.add_layer(flat_tar, gzip_level=6, created_by="the layered image, flattened")
    store.remove("layered:1")
    return writer.finish([layer], config["config"]), image.digest


# --- podman in a throwaway root ----------------------------------------------------------------


def podman_cmd(podman: str, root: Path) -> list[str]:
    """podman with its storage under ``root`` and its run root in ``root``'s RUNROOT file (a
    short path in /tmp: podman refuses a run root longer than 50 characters)."""
    runroot = (root / "RUNROOT").read_text()
    return [podman, "--root", str(root / "root"), "--runroot", runroot, "--tmpdir", str(root / "tmp"),
            "--storage-driver", "overlay", "--events-backend", "none", "--cgroup-manager", "cgroupfs",
            "--network-config-dir", str(root / "net")]


def make_podman_root(root: Path) -> None:
    (root / "RUNROOT").write_text(tempfile.mkdtemp(prefix="pmpod-", dir="/tmp"))


def remove_podman_root(podman: str, root: Path) -> None:
    subprocess.run([*podman_cmd(podman, root), "rmi", "-a", "-f"], capture_output=True)
    runroot = Path((root / "RUNROOT").read_text())
    for path in (root, runroot):
        unmount_below(path)
        shutil.rmtree(path, ignore_errors=True)


def unmount_below(root: Path) -> None:
    """Every mount at or below ``root``, deepest first (podman's overlay driver bind-mounts its home)."""
    prefix = str(root.resolve())
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    for point in sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


# --- the parts ---------------------------------------------------------------------------------


@dataclass
class Bench:
    work: Path
    registry: Registry
    refs: dict[str, str]  # image -> registry reference
    facts: dict[str, dict[str, Any]]  # image -> layers, blob bytes, tree digest
    runs: int
    podman: str | None
    layouts: dict[str, Path] = field(default_factory=dict)  # image -> its OCI layout (as pushed)
    roots: list[Path] = field(default_factory=list)  # every state root made (for cleanup)

    def fresh_root(self, label: str) -> Path:
        root = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.work))
        self.roots.append(root)
        return root


SECONDS_COLUMNS = (("median s", "median_s", ".2f"), ("min s", "min_s", ".2f"), ("max s", "max_s", ".2f"))


@dataclass
class Section:
    title: str
    rows: list[tuple[str, dict[str, Any]]]  # label, the row's values by column key (stats_s(...) by default)
    data: dict[str, Any]
    columns: tuple[tuple[str, str, str], ...] = SECONDS_COLUMNS  # (header, key in a row, format spec)
    notes: tuple[str, ...] = ()  # lines printed under the table


def bench_pull(b: Bench) -> Section:
    tools = ["pymigrate", *(["podman"] if b.podman else []), "skopeo"]
    samples: dict[str, list[float]] = {f"{t} {i}": [] for t in tools for i in IMAGES}
    sizes: dict[str, int] = {}
    for _ in range(b.runs):
        for image in IMAGES:
            root = b.fresh_root("pm")
            pm = pymigrate_cmd(root)
            samples[f"pymigrate {image}"].append(timed([*pm, "image", "pull", b.refs[image], "--tls-verify=false",
                                                        "--name", f"{image}:1"]))
            out = subprocess.run([*pm, "image", "inspect", f"{image}:1", "--json"], capture_output=True, check=True)
            inspected = json.loads(out.stdout)
            sizes[image] = inspected["size_bytes"]
            if inspected["digest"] != b.facts["layered"]["tree_digest"]:
                raise SystemExit(f"bench: {image} pulled as {inspected['digest']}, expected the layered image's tree")
            shutil.rmtree(root)
            b.roots.remove(root)
            # what pymigrate's pull runs first: skopeo's download into an OCI layout, nothing unpacked
            sroot = b.fresh_root("skopeo")
            samples[f"skopeo {image}"].append(timed(["skopeo", "copy", "-q", "--src-tls-verify=false",
                                                     f"docker://{b.refs[image]}", f"oci:{sroot / 'oci'}:pulled"]))
            shutil.rmtree(sroot)
            b.roots.remove(sroot)
            if b.podman:
                proot = b.fresh_root("podman")
                make_podman_root(proot)
                samples[f"podman {image}"].append(timed([*podman_cmd(b.podman, proot), "pull", "-q", "--tls-verify=false",
                                                         b.refs[image]]))
                remove_podman_root(b.podman, proot)
                b.roots.remove(proot)
    rows = [(f"{label} ({b.facts[label.split()[1]]['layers']} layer(s))" + (": copy to an OCI dir only" if label.startswith("skopeo") else ""),
             stats_s(s)) for label, s in samples.items()]
    return Section("pull into a cold store (wall time of the command)", rows,
                   {"unpacked_bytes": sizes, **{label: stats_s(s) for label, s in samples.items()}})


def bench_run(b: Bench) -> Section:
    # a store per image: the two have the same tree digest, and one store keeps one record per digest
    pms = {image: pymigrate_cmd(b.fresh_root(f"run-{image}")) for image in IMAGES}
    for image, pm in pms.items():
        subprocess.run([*pm, "image", "pull", b.refs[image], "--tls-verify=false", "--name", f"{image}:1"],
                       check=True, capture_output=True)
    samples: dict[str, list[float]] = {image: [] for image in IMAGES}
    try:
        for i in range(b.runs):
            for image, pm in pms.items():
                name = f"bench-{image}-{i}"
                samples[image].append(timed([*pm, "run", "-d", "--name", name, "--network", "none", f"{image}:1"]))
                subprocess.run([*pm, "rm", "-f", name], check=True, capture_output=True)
    finally:
        for image, pm in pms.items():
            subprocess.run([*pm, "rm", "-f", *[f"bench-{image}-{n}" for n in range(b.runs)]], capture_output=True)
    rows = [(f"run -d {image}:1 ({b.facts[image]['layers']} layer(s), no command)", stats_s(s)) for image, s in samples.items()]
    data: dict[str, Any] = {image: stats_s(s) for image, s in samples.items()}
    data["ratio_median_layered_to_flat"] = round(statistics.median(samples["layered"]) / statistics.median(samples["flat"]), 3)
    return Section("pymigrate run -d (the image's own Entrypoint/Cmd, --network none)", rows, data)


# --- migrate: the image's bytes on the wire ----------------------------------------------------

SIBLING = "sibling:1"  # the suite's Debian + Redis image: the layered image's three lower layers
FLAT_TREE = "flat-tree:1"  # flat:1's tree imported as a rootfs tarball: stored without layers
# key -> label, in the table's order (the moves run in another: none, all, some, flat, tree)
MOVES = {
    "none": "layered:1 -> target with none of its layers",
    "some": f"layered:1 -> target with some ({SIBLING}: its 3 lower layers)",
    "all": "layered:1 -> target with all (a 2nd container)",
    "flat": "flat:1 (1 layer) -> target without it",
    "tree": f"{FLAT_TREE} (no layers: a raw tar) -> target without it",
}
MIGRATE_COLUMNS = (("image MiB", "image_mib", ".2f"), ("layers", "image_layers_sent", "d"), ("image ms", "image_ms", ".0f"),
                   ("total ms", "total_ms", ".0f"), ("frozen ms", "frozen_ms", ".0f"), ("frozen min", "frozen_min_ms", ".0f"),
                   ("frozen max", "frozen_max_ms", ".0f"))


def stats_ms(samples: list[float]) -> dict[str, Any]:
    return {"median_ms": round(statistics.median(samples), 1), "min_ms": round(min(samples), 1),
            "max_ms": round(max(samples), 1), "samples_ms": [round(s, 1) for s in samples]}


def _pm(host: Any, args: list[str], timeout: float = 300) -> bytes:
    """``pymigrate ARGS`` on ``host``; its stdout, or the bench stops with its error."""
    r = host.cli(args, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"bench: host {host.letter}: pymigrate {' '.join(args)} failed ({r.returncode}): "
                         f"{r.stderr.decode().strip()[-2000:]}")
    return bytes(r.stdout)


def _move(source: Any, name: str, dest: str, target: Any) -> dict[str, Any]:
    """Migrate ``name`` from ``source``'s CLI to the daemon at ``dest``; the stats this part reports."""
    from tests.integration.migrate_helpers import migrate_json, names_by_status

    stats = migrate_json(_pm(source, ["--insecure", "migrate", name, dest, "--json"]))["stats"]
    if names_by_status(target).get(name) != "running":
        raise SystemExit(f"bench: {name} does not run on host {target.letter} after its migration")
    return {"image_bytes": stats["image_bytes"], "image_layers_sent": stats["image_layers_sent"],
            "image_ms": stats["phases_ms"].get("image", 0.0), "total_ms": stats["total_ms"],
            "frozen_ms": stats["frozen_ms"], "bytes_on_wire": stats["bytes_on_wire"], "phases_ms": stats["phases_ms"]}


def _empty(target: Any) -> None:
    """Every container and image off ``target``, so that it holds none of the layers again."""
    from tests.integration.migrate_helpers import ps

    names = [c["spec"]["name"] for c in ps(target)]
    if names:
        _pm(target, ["rm", "-f", *names])
    _pm(target, ["image", "prune", "--all", "-f"])
    images = json.loads(_pm(target, ["image", "ls", "--json"]))
    layers_dir = target.root / "layers"
    layers = [p.name for p in layers_dir.iterdir() if not p.name.startswith(".")] if layers_dir.is_dir() else []
    if images or layers:
        raise SystemExit(f"bench: host {target.letter} still holds images {images} and layers {layers} after prune --all")


def _expect(key: str, got: dict[str, Any], layers: int) -> None:
    """The layered moves must send exactly the layers the target lacked (the feature measured)."""
    if got["image_layers_sent"] != layers or (layers == 0) != (got["image_bytes"] == 0):
        raise SystemExit(f"bench: move '{key}' sent {got['image_layers_sent']} layer(s), {got['image_bytes']} bytes; "
                         f"expected {layers} layer(s)")


def bench_migrate(b: Bench) -> Section:
    from tests.integration.hosts import Hosts
    from tests.integration.migrate_helpers import start_tcp_daemons

    sibling = redis_layout()[0]
    lower_layers = len(read_layout(sibling)[0]["layers"])
    layered_layers = b.facts["layered"]["layers"]
    flat_manifest, flat_config = read_layout(b.layouts["flat"])
    flat_blob = b.layouts["flat"] / "blobs" / "sha256" / flat_manifest["layers"][0]["digest"].removeprefix("sha256:")
    run_config = flat_config["config"]  # a rootfs tarball has none: the tree's container gets it spelled out
    tree_run = ["-w", run_config["WorkingDir"], *[a for env in run_config["Env"] for a in ("-e", env)],
                FLAT_TREE, *run_config["Entrypoint"], *run_config["Cmd"]]
    samples: dict[str, list[dict[str, Any]]] = {key: [] for key in MOVES}
    with Hosts(4, base_dir=b.work) as hosts:
        src_layered, src_flat, src_tree, target = hosts
        dest = start_tcp_daemons([target])[target.letter]  # the sources move their containers from the CLI
        _pm(src_layered, ["image", "load", str(b.layouts["layered"]), "--name", "layered:1"])
        _pm(src_flat, ["image", "load", str(b.layouts["flat"]), "--name", "flat:1"])
        _pm(src_tree, ["image", "import", FLAT_TREE, str(flat_blob)])
        for i in range(b.runs):
            name = {key: f"mig-{key}-{i}" for key in MOVES}
            for key, host, image in (("none", src_layered, ["layered:1"]), ("all", src_layered, ["layered:1"]),
                                     ("some", src_layered, ["layered:1"]), ("flat", src_flat, ["flat:1"]),
                                     ("tree", src_tree, tree_run)):
                _pm(host, ["run", "-d", "--name", name[key], "--network", "none", *image])
            time.sleep(2)  # every redis-server past its start
            samples["none"].append(_move(src_layered, name["none"], dest, target))
            _expect("none", samples["none"][-1], layered_layers)
            samples["all"].append(_move(src_layered, name["all"], dest, target))
            _expect("all", samples["all"][-1], 0)
            _empty(target)
            _pm(target, ["image", "load", str(sibling), "--name", SIBLING])
            samples["some"].append(_move(src_layered, name["some"], dest, target))
            _expect("some", samples["some"][-1], layered_layers - lower_layers)
            _empty(target)
            samples["flat"].append(_move(src_flat, name["flat"], dest, target))
            _empty(target)
            samples["tree"].append(_move(src_tree, name["tree"], dest, target))
            _empty(target)
    return _migrate_section(samples, b.runs)


def _migrate_section(samples: dict[str, list[dict[str, Any]]], runs: int) -> Section:
    rows: list[tuple[str, dict[str, Any]]] = []
    data: dict[str, Any] = {}
    for key, label in MOVES.items():
        moves = samples[key]
        image_bytes = [m["image_bytes"] for m in moves]
        ms = {field: stats_ms([m[field] for m in moves]) for field in ("image_ms", "total_ms", "frozen_ms")}
        data[key] = {"label": label, "image_bytes": int(statistics.median(image_bytes)), "image_bytes_samples": image_bytes,
                     "image_layers_sent": moves[0]["image_layers_sent"],
                     "bytes_on_wire": int(statistics.median(m["bytes_on_wire"] for m in moves)), **ms,
                     "phases_ms_samples": [m["phases_ms"] for m in moves]}
        rows.append((label, {"image_mib": data[key]["image_bytes"] / 2**20, "image_layers_sent": data[key]["image_layers_sent"],
                             "image_ms": ms["image_ms"]["median_ms"], "total_ms": ms["total_ms"]["median_ms"],
                             "frozen_ms": ms["frozen_ms"]["median_ms"], "frozen_min_ms": ms["frozen_ms"]["min_ms"],
                             "frozen_max_ms": ms["frozen_ms"]["max_ms"]}))
    frozen = {key: data[key]["frozen_ms"]["median_ms"] for key in MOVES}
    most = max(MOVES, key=lambda k: data[k]["image_bytes"])
    data["frozen_ms_medians"] = frozen
    data["note"] = "frozen_ms should not depend on the image: the image is sent (phase image) before the freeze"
    notes = (
        f"(medians of {runs} run(s); image MiB, layers (blobs) and image ms: what went for the image, in its own phase",
        " before the freeze (layers 0 with MiB > 0: one raw tar); frozen = freeze to running on the target.",
        " frozen ms should not depend on the image, which goes before the freeze: here "
        f"{min(frozen.values()):.0f}-{max(frozen.values()):.0f} ms over the moves,",
        f" {frozen[most]:.0f} ms with the most image ({most}: {data[most]['image_bytes'] / 2**20:.1f} MiB), "
        f"{frozen['all']:.0f} ms with none (all))",
    )
    return Section("pymigrate migrate --json (cold; redis-server, --network none): the image on the wire",
                   rows, data, MIGRATE_COLUMNS, notes)


PARTS: dict[str, Callable[[Bench], Section]] = {"pull": bench_pull, "run": bench_run, "migrate": bench_migrate}


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=3)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument("--app-mib", type=int, default=8, help="MiB of random files in the application layer")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a mkdtemp in /var/tmp, removed at the end")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}: expected some of {list(PARTS)}")
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (overlayfs layers, containers)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pmbench-images-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    podman = shutil.which("podman")
    registry = start_registry(work / "registry")
    bench = None
    try:
        t0 = time.monotonic()
        layered = build_layered(work / "layered", args.app_mib)
        scratch = work / "scratch-root"
        flat, digest = build_flat(layered, work / "flat", scratch)
        shutil.rmtree(scratch)
        refs = {image: f"{registry.address}/bench/{image}:1" for image in IMAGES}
        facts: dict[str, dict[str, Any]] = {}
        for image, layout in (("layered", layered), ("flat", flat)):
            skopeo_push(layout, registry, f"bench/{image}:1")
            manifest, _ = read_layout(layout)
            facts[image] = {"layers": len(manifest["layers"]), "blob_bytes": sum(m["size"] for m in manifest["layers"]),
                            "tree_digest": digest}
        prepare_s = time.monotonic() - t0
        bench = Bench(work, registry, refs, facts, args.runs, podman, layouts={"layered": layered, "flat": flat})
        sections = [PARTS[p](bench) for p in parts]
    finally:
        registry.stop()
        for root in bench.roots if bench else []:
            if root.name.startswith("podman") and podman:
                remove_podman_root(podman, root)
            else:
                unmount_below(root)
        if not args.keep and args.workdir is None:
            unmount_below(work)
            shutil.rmtree(work, ignore_errors=True)

    result = {"runs": args.runs, "podman": podman is not None, "prepare_s": round(prepare_s, 1), "images": facts,
              **{p: s.data for p, s in zip(parts, sections)}}
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    described = ", ".join(f"{i}:1 {f['layers']} layer(s), {f['blob_bytes'] / 2**20:.1f} MiB of blobs" for i, f in facts.items())
    print(f"images: {described}; tree {digest[:19]}; {args.runs} interleaved runs each; prepared in {prepare_s:.0f} s")
    if not podman:
        print("podman not installed: its rows are left out")
    for section in sections:
        print(f"\n{section.title}")
        width = max(len(label) for label, _ in section.rows) + 2
        sizes = [max(10, len(head) + 2) for head, _, _ in section.columns]
        print(f"  {'':{width}}" + "".join(f"{head:>{n}}" for (head, _, _), n in zip(section.columns, sizes)))
        for label, row in section.rows:
            print(f"  {label:{width}}" + "".join(f"{row[key]:>{n}{spec}}" for (_, key, spec), n in zip(section.columns, sizes)))
        for note in section.notes:
            print(f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
