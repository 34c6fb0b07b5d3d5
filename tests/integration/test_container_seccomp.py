"""Every container process runs under a seccomp filter, and keeps it across checkpoint/restore.

The probe (tests/workloads/scprobe.c, static) prints its own ``Seccomp``/``Seccomp_filters`` and
tries ``userfaultfd(UFFD_USER_MODE_ONLY)`` (the kernel allows it to anyone; the default profile
answers EPERM) and ``mkdir`` (allowed by the default profile; the custom profile here answers
EPERM). A container loops the probe into /tmp/probe every 50 ms, so after a checkpoint and a
restore (or an export and an import on another state root) the *restored* shell's children show
whether the filter CRIU restored still holds; ``pymigrate exec`` processes are probed as well.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.integration.conftest import PYMIGRATE, REPO
from tests.integration.hosts import make_hosts, two_hosts  # noqa: F401  (fixtures)
from tests.integration.workloads import container_file, import_image, init_pid, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "busybox")]

PROBE_SRC = REPO / "tests" / "workloads" / "scprobe.c"
DEFAULT_PROFILE = Path("/usr/share/containers/seccomp.json")
LOOP = 'i=0; while true; do i=$((i+1)); echo "$i $(scprobe)" > /tmp/probe.new; mv /tmp/probe.new /tmp/probe; sleep 0.05; done'

DEFAULT_VERDICT = {"seccomp": "2", "filters": "1", "userfaultfd": "EPERM", "mkdir": "ok"}
CUSTOM_VERDICT = {"seccomp": "2", "filters": "1", "userfaultfd": "EPERM", "mkdir": "EPERM"}
UNCONFINED_VERDICT = {"seccomp": "0", "filters": "0", "userfaultfd": "ok", "mkdir": "ok"}


@pytest.fixture(scope="session")
def probe_tar(pm_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """busybox + /bin/scprobe as an image tar."""
    from runtime.config import Paths
    from runtime.image_store import ImageStore

    if not DEFAULT_PROFILE.is_file():
        pytest.skip(f"no default seccomp profile at {DEFAULT_PROFILE} (scripts/setup.sh installs it)")
    out = Path(tmp_path_factory.mktemp("scprobe"))
    binary = out / "scprobe"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(PROBE_SRC)], check=True, capture_output=True, timeout=120)
    tar_path = out / "scprobe.tar"
    with open(tar_path, "wb") as f:
        ImageStore(Paths(pm_root)).export_stream("busybox", f)
    with tarfile.open(tar_path, "a", format=tarfile.PAX_FORMAT) as tar:
        info = tar.gettarinfo(str(binary), arcname="bin/scprobe")
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        with open(binary, "rb") as f:
            tar.addfile(info, f)
    return tar_path


@pytest.fixture(scope="session")
def probe_image(pm_root: Path, probe_tar: Path) -> str:
    import_image(pm_root, "scprobe", probe_tar)
    return "scprobe"


@pytest.fixture(scope="session")
def deny_mkdir_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default profile, with mkdir and mkdirat answered EPERM instead of allowed."""
    profile = json.loads(DEFAULT_PROFILE.read_text())
    for call in profile["syscalls"]:
        call["names"] = [n for n in call["names"] if n not in ("mkdir", "mkdirat")]
    profile["syscalls"] = [c for c in profile["syscalls"] if c["names"]]
    profile["syscalls"].append({"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1})
    path = Path(tmp_path_factory.mktemp("profile")) / "deny-mkdir.json"
    path.write_text(json.dumps(profile))
    return path


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode(errors='replace')}"
    return r.stdout.decode()


def verdict(line: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


def read_probe(root: Path, name: str) -> tuple[int, dict[str, str]] | None:
    try:
        round_, rest = container_file(root, name, "/tmp/probe").read_text().split(" ", 1)
    except (OSError, ValueError):
        return None
    return int(round_), verdict(rest)


def probe_after(root: Path, name: str, after: int) -> tuple[int, dict[str, str]]:
    return wait_for(lambda: (p := read_probe(root, name)) and p[0] > after and p, 20, f"{name}: a probe round after {after}")


def host_status(pid: int) -> tuple[str, str]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return fields["Seccomp"].strip(), fields["Seccomp_filters"].strip()


def security_opt(kind: str, custom: Path) -> list[str]:
    return {"default": [], "unconfined": ["--security-opt", "seccomp=unconfined"], "custom": ["--security-opt", f"seccomp={custom}"]}[kind]


EXPECTED = {"default": DEFAULT_VERDICT, "unconfined": UNCONFINED_VERDICT, "custom": CUSTOM_VERDICT}


@pytest.mark.usefixtures("rt")
@pytest.mark.parametrize("kind", ["default", "unconfined", "custom"])
def test_init_and_exec_get_the_chosen_filter(pm, pm_root: Path, probe_image: str, deny_mkdir_profile: Path, kind: str) -> None:  # noqa: ANN001
    name = f"sc-{kind}-{secrets.token_hex(3)}"
    ok(pm("run", "-d", "--name", name, *security_opt(kind, deny_mkdir_profile), probe_image, "sh", "-c", LOOP))
    _, seen = probe_after(pm_root, name, 0)
    assert seen == EXPECTED[kind], f"{kind}: the init's children: {seen}"
    assert host_status(init_pid(pm_root, name)) == (EXPECTED[kind]["seccomp"], EXPECTED[kind]["filters"])
    assert verdict(ok(pm("exec", name, "scprobe"))) == EXPECTED[kind], f"{kind}: an exec'd process"
    info = json.loads(ok(pm("--json", "inspect", name)))[0]
    assert info["spec"]["seccomp"] == kind
    if kind == "custom":
        assert json.loads(info["spec"]["seccomp_profile"]) == json.loads(deny_mkdir_profile.read_text())
        mk = pm("exec", name, "mkdir", "/tmp/made-by-exec")
        assert mk.returncode != 0 and b"Operation not permitted" in mk.stderr


@pytest.mark.usefixtures("rt")
def test_normal_work_runs_under_the_default_filter(pm, pm_root: Path, probe_image: str) -> None:  # noqa: ANN001
    name = f"sc-httpd-{secrets.token_hex(3)}"
    ok(pm("run", "-d", "--name", name, probe_image, "sh", "-c", "mkdir -p /www && echo hello-seccomp > /www/index.html && exec httpd -f -p 8080 -h /www"))
    got = wait_for(lambda: (r := pm("exec", name, "wget", "-qO-", "http://127.0.0.1:8080/")).returncode == 0 and r.stdout, 20, "httpd answering")
    assert got.strip() == b"hello-seccomp"
    ps = ok(pm("exec", name, "ps"))
    assert "httpd" in ps
    assert verdict(ok(pm("exec", name, "scprobe"))) == DEFAULT_VERDICT


@pytest.mark.usefixtures("rt")
def test_no_default_profile_refuses_run_instead_of_running_unconfined(pm, pm_root: Path, probe_image: str) -> None:  # noqa: ANN001
    name = f"sc-none-{secrets.token_hex(3)}"
    env = {**os.environ, "PYMIGRATE_SECCOMP_PROFILE": "/nonexistent/seccomp.json"}
    r = subprocess.run([*PYMIGRATE, "--root", str(pm_root), "run", "-d", "--name", name, probe_image, "true"],
                       capture_output=True, timeout=60, cwd=REPO, env=env)
    assert r.returncode != 0
    assert b"default seccomp profile" in r.stderr and b"/nonexistent/seccomp.json" in r.stderr
    assert pm("inspect", name).returncode != 0  # nothing was created
    r = pm("run", "-d", "--name", name, "--security-opt", "seccomp=/nonexistent/p.json", probe_image, "true")
    assert r.returncode != 0 and b"cannot read seccomp profile /nonexistent/p.json" in r.stderr


@pytest.mark.requires("criu", "pycriu")
@pytest.mark.usefixtures("rt")
@pytest.mark.parametrize("kind", ["default", "custom"])
def test_filter_survives_checkpoint_and_restore(pm, pm_root: Path, probe_image: str, deny_mkdir_profile: Path, kind: str) -> None:  # noqa: ANN001
    name = f"sc-cr-{kind}-{secrets.token_hex(3)}"
    ok(pm("run", "-d", "--name", name, *security_opt(kind, deny_mkdir_profile), probe_image, "sh", "-c", LOOP))
    last, seen = probe_after(pm_root, name, 0)
    assert seen == EXPECTED[kind]
    before = host_status(init_pid(pm_root, name))
    cid = ok(pm("checkpoint", name)).strip().splitlines()[0]
    try:
        ok(pm("restore", cid))
        assert host_status(init_pid(pm_root, name)) == before  # CRIU restored the init's filter
        last, seen = probe_after(pm_root, name, last)  # the restored loop's children
        assert seen == EXPECTED[kind], f"{kind} after restore: {seen}"
        assert verdict(ok(pm("exec", name, "scprobe"))) == EXPECTED[kind], f"{kind}: exec after restore"
    finally:
        pm("checkpoint", "rm", cid)


@pytest.mark.requires("criu", "pycriu", "netns")
def test_filter_holds_after_export_and_import_on_another_host(two_hosts, probe_tar: Path, tmp_path: Path) -> None:  # noqa: ANN001
    a, b = two_hosts
    for h in (a, b):
        import_image(h.root, "scprobe", probe_tar)
    name = f"sc-move-{secrets.token_hex(3)}"
    ok(a.cli(["run", "-d", "--name", name, "scprobe", "sh", "-c", LOOP]))
    last, seen = probe_after(a.root, name, 0)
    assert seen == DEFAULT_VERDICT
    before = host_status(init_pid(a.root, name))
    archive = tmp_path / "seccomp.pma"
    ok(a.cli(["checkpoint", name, "--export", str(archive)]))
    ok(b.cli(["restore", "--import", str(archive)]))
    assert host_status(init_pid(b.root, name)) == before
    _, seen = probe_after(b.root, name, last)
    assert seen == DEFAULT_VERDICT, f"after import: {seen}"
    assert verdict(ok(b.cli(["exec", name, "scprobe"]))) == DEFAULT_VERDICT


@pytest.mark.requires("criu", "pycriu", "netns")
def test_an_imported_archive_cannot_weaken_the_filter_unless_the_importer_says_so(two_hosts, probe_tar: Path, deny_mkdir_profile: Path, tmp_path: Path) -> None:  # noqa: ANN001
    a, b = two_hosts
    for h in (a, b):
        import_image(h.root, "scprobe", probe_tar)
    for kind in ("unconfined", "custom"):
        name = f"sc-imp-{kind}-{secrets.token_hex(3)}"
        ok(a.cli(["run", "-d", "--name", name, "--network", "none", *security_opt(kind, deny_mkdir_profile), "scprobe", "sh", "-c", LOOP]))
        last, _ = probe_after(a.root, name, 0)
        archive = tmp_path / f"{kind}.pma"
        ok(a.cli(["checkpoint", name, "--export", str(archive)]))
        refused = b.cli(["restore", "--import", str(archive)])
        assert refused.returncode != 0, f"{kind}: an archive asking for seccomp {kind} was imported silently"
        assert b"cannot weaken the default filter" in refused.stderr and b"--security-opt" in refused.stderr
        assert b.cli(["inspect", name]).returncode != 0  # nothing was created
        ok(b.cli(["restore", "--import", str(archive), *security_opt(kind, deny_mkdir_profile)]))
        _, seen = probe_after(b.root, name, last)
        assert seen == EXPECTED[kind], f"{kind} imported with the importer's consent: {seen}"
        assert verdict(ok(b.cli(["exec", name, "scprobe"]))) == EXPECTED[kind]


@pytest.mark.requires("criu", "pycriu", "netns")
def test_filter_holds_after_a_cold_migration_and_a_peer_cannot_weaken_it(two_hosts, probe_tar: Path, deny_mkdir_profile: Path) -> None:  # noqa: ANN001
    from tests.integration.migrate_helpers import start_tcp_daemons

    a, b = two_hosts
    for h in (a, b):
        import_image(h.root, "scprobe", probe_tar)
    addr = start_tcp_daemons([a, b])
    name = f"sc-mig-{secrets.token_hex(3)}"
    ok(a.cli(["run", "-d", "--name", name, "--network", "none", "scprobe", "sh", "-c", LOOP]))
    last, _ = probe_after(a.root, name, 0)
    before = host_status(init_pid(a.root, name))
    ok(a.cli(["migrate", name, addr["b"], "--insecure"]))
    assert host_status(init_pid(b.root, name)) == before
    _, seen = probe_after(b.root, name, last)
    assert seen == DEFAULT_VERDICT, f"after migration: {seen}"
    assert verdict(ok(b.cli(["exec", name, "scprobe"]))) == DEFAULT_VERDICT

    custom = f"sc-mig-custom-{secrets.token_hex(3)}"
    ok(a.cli(["run", "-d", "--name", custom, "--network", "none", *security_opt("custom", deny_mkdir_profile), "scprobe", "sh", "-c", LOOP]))
    last, _ = probe_after(a.root, custom, 0)
    refused = a.cli(["migrate", custom, addr["b"], "--insecure"])
    assert refused.returncode != 0 and b"seccomp" in refused.stderr, refused.stderr
    _, seen = probe_after(a.root, custom, last)  # still running on the source, still filtered
    assert seen == CUSTOM_VERDICT
    assert b.cli(["inspect", custom]).returncode != 0


@pytest.mark.requires("criu", "pycriu")
@pytest.mark.usefixtures("rt")
def test_an_archive_whose_processes_lack_the_filter_its_manifest_claims_is_refused(pm, pm_root: Path, probe_image: str, tmp_path: Path) -> None:  # noqa: ANN001
    """CRIU restores the filters the images describe: an unconfined container's export whose
    manifest was rewritten to claim the default profile must not come back unfiltered."""
    from tests.integration.test_trust_manifest import craft

    name = f"sc-lie-{secrets.token_hex(3)}"
    ok(pm("run", "-d", "--name", name, "--network", "none", "--security-opt", "seccomp=unconfined", probe_image, "sh", "-c", LOOP))
    probe_after(pm_root, name, 0)
    genuine = tmp_path / "unconfined.pma"
    ok(pm("checkpoint", name, "--export", str(genuine)))
    ok(pm("rm", name))
    lying = craft(genuine, tmp_path / "lying.pma", lambda spec: spec.update(seccomp="default"))
    refused = pm("restore", "--import", str(lying))
    assert refused.returncode != 0
    assert b"describe processes without a seccomp filter" in refused.stderr, refused.stderr
    assert pm("inspect", name).returncode != 0  # nothing was created
    # (the importer's consent, --security-opt seccomp=unconfined, is the test above; ``craft``
    # copies images/ and upper/ only, not an upper-layer image, so this archive is not restorable)


@pytest.mark.requires("criu", "pycriu", "netns", "lazy_pages")
def test_filter_holds_after_a_postcopy_migration(two_hosts, probe_tar: Path) -> None:  # noqa: ANN001
    from tests.integration.migrate_helpers import start_tcp_daemons

    a, b = two_hosts
    for h in (a, b):
        import_image(h.root, "scprobe", probe_tar)
    addr = start_tcp_daemons([a, b])
    name = f"sc-post-{secrets.token_hex(3)}"
    ok(a.cli(["run", "-d", "--name", name, "--network", "none", "scprobe", "sh", "-c", LOOP]))
    last, _ = probe_after(a.root, name, 0)
    before = host_status(init_pid(a.root, name))
    ok(a.cli(["migrate", name, addr["b"], "--insecure", "--mode", "postcopy"]))
    assert host_status(init_pid(b.root, name)) == before
    _, seen = probe_after(b.root, name, last)
    assert seen == DEFAULT_VERDICT, f"after post-copy migration: {seen}"
    assert verdict(ok(b.cli(["exec", name, "scprobe"]))) == DEFAULT_VERDICT


def with_permissive_filters(genuine: Path, out: Path) -> Path:
    """``genuine`` rebuilt member for member (manifest, upper layer, packed upper-layer image,
    images) with every filter in images/seccomp.img replaced by one that allows everything
    (the chains' shape, ``prev`` and flags kept): what a crafted archive would carry."""
    import shutil
    import tempfile

    from migrate.archive import ArchiveWriter, read_archive
    from runtime import seccomp
    from tests.unit.test_seccomp_images import ALLOW_ALL, seccomp_image

    scratch = Path(tempfile.mkdtemp(dir=out.parent))
    try:
        with open(genuine, "rb") as f:
            manifest = read_archive(f, scratch / "x")
        images = scratch / "x" / "images"
        filters = seccomp.image_filters(images)
        assert filters, "the genuine export carries no seccomp filters"
        (images / seccomp.SECCOMP_IMAGE).write_bytes(seccomp_image(*((ALLOW_ALL, f.prev) for f in filters)))
        with open(out, "wb") as f, ArchiveWriter(f, compress="none") as writer:
            writer.write_manifest({k: v for k, v in manifest.items() if k != "dump_stats"})
            if (scratch / "x" / "upper").is_dir():
                writer.add_tree("upper", scratch / "x" / "upper")
            for member in ("upper.img.map", "upper.img.data"):
                if (scratch / "x" / member).is_file():
                    writer.add_file(member, scratch / "x" / member)
            for path in sorted(images.iterdir()):
                writer.add_file(f"images/{path.name}", path)
            writer.close(trailer={"dump_stats": manifest.get("dump_stats", {})})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


@pytest.mark.requires("criu", "pycriu")
@pytest.mark.usefixtures("rt")
def test_an_archive_whose_filters_are_not_the_profile_is_refused(pm, pm_root: Path, probe_image: str, tmp_path: Path) -> None:  # noqa: ANN001
    """The images' filters must contain the program this host compiles for the spec: a genuine
    export passes, the same export with an allow-everything filter in seccomp.img is refused
    (nothing left behind) unless the importer accepts the images' own filters."""
    from tests.integration.test_trust_manifest import leftovers

    name = f"sc-allow-{secrets.token_hex(3)}"
    ok(pm("run", "-d", "--name", name, "--network", "none", probe_image, "sh", "-c", LOOP))
    last, _ = probe_after(pm_root, name, 0)
    genuine = tmp_path / "genuine.pma"
    ok(pm("checkpoint", name, "--export", str(genuine)))
    ok(pm("rm", name))
    permissive = with_permissive_filters(genuine, tmp_path / "permissive.pma")
    before = leftovers(pm_root)

    refused = pm("restore", "--import", str(permissive))
    assert refused.returncode != 0, "an archive whose processes allow every syscall was imported under seccomp default"
    assert b"seccomp" in refused.stderr and b"not the container's profile" in refused.stderr, refused.stderr
    assert b"seccomp=unconfined" in refused.stderr
    assert pm("inspect", name).returncode != 0  # nothing was created
    assert leftovers(pm_root) == before

    ok(pm("restore", "--import", str(genuine)))  # the genuine export on the same root
    assert host_status(init_pid(pm_root, name)) == ("2", "1")
    last, seen = probe_after(pm_root, name, last)
    assert seen == DEFAULT_VERDICT, f"after importing the genuine export: {seen}"
    ok(pm("rm", "-f", name))

    ok(pm("restore", "--import", str(permissive), "--security-opt", "seccomp=unconfined"))  # the importer's consent
    assert host_status(init_pid(pm_root, name)) == ("2", "1")
    _, seen = probe_after(pm_root, name, last)
    # what the check kept out: CRIU restored the archive's filter, which allows everything
    assert seen == {"seccomp": "2", "filters": "1", "userfaultfd": "ok", "mkdir": "ok"}, seen
    assert verdict(ok(pm("exec", name, "scprobe"))) == UNCONFINED_VERDICT


@pytest.mark.requires("criu", "pycriu", "netns")
def test_a_container_with_a_zombie_moves_under_its_filter(two_hosts, probe_tar: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """An exited child its parent never reaps is dumped dead with no seccomp state; it must not
    make the container unmovable (it once refused every import and migration of such a
    container: "describe processes without a seccomp filter")."""
    a, b = two_hosts
    for h in (a, b):
        import_image(h.root, "scprobe", probe_tar)
    name = f"sc-zombie-{secrets.token_hex(3)}"
    ok(a.cli(["run", "-d", "--name", name, "scprobe", "sh", "-c", "sleep 0 & exec sleep 100000"]))
    wait_for(lambda: " Z " in ok(a.cli(["exec", name, "ps", "-o", "pid,stat,args"])), 10, "the unreaped child")
    archive = tmp_path / "zombie.pma"
    ok(a.cli(["checkpoint", name, "--export", str(archive)]))
    ok(b.cli(["restore", "--import", str(archive)]))
    assert host_status(init_pid(b.root, name))[0] == "2", "init must run under a filter after the import"
    assert " Z " in ok(b.cli(["exec", name, "ps", "-o", "pid,stat,args"])), "the zombie is restored dead"
