"""``image pull / push / load / inspect`` through a real daemon (``--host``), and ``image login``,
against real docker-registry instances (the registries and the three-layer image of
tests/integration/test_image_registry.py).

The daemon serves the session's state root on its own unix socket, so what it stores is run by the
local CLI. It starts with ``REGISTRY_AUTH_FILE`` pointing at this module's auth file (empty until
``image login`` writes it): a daemon's pulls without ``--creds`` read its own environment's auth
file, which is the point of the login test.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.cli_helpers import ok, refused, start_daemon, stop_daemon, unique
from tests.integration.test_image_registry import (  # noqa: F401 (layout, open_registry, secure_registry: fixtures)
    EXPECTED_LOG,
    PASSWORD,
    USER,
    Registry,
    layout,
    nothing_stored,
    open_registry,
    run_default,
    secure_registry,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "busybox")]

PM = Callable[..., subprocess.CompletedProcess]
PULLED_KEYS = {"name", "digest", "size_bytes", "created_at", "reference"}


@pytest.fixture(scope="module")
def authfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth") / "auth.json"


@pytest.fixture(scope="module")
def daemon(pm_root: Path, authfile: Path) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REGISTRY_AUTH_FILE", str(authfile))  # the daemon's default auth file (its environment's)
        proc, sock = start_daemon(pm_root)
    try:
        yield f"unix:{sock}"
    finally:
        stop_daemon(proc, sock)


@pytest.fixture
def remote(pm: PM, daemon: str) -> PM:
    def run(*args: str, timeout: float = 300, input: bytes | None = None) -> subprocess.CompletedProcess:
        return pm("--host", daemon, *args, timeout=timeout, input=input)

    return run


def _skopeo_copy(*args: str) -> None:
    r = subprocess.run(["skopeo", "copy", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


# --- pull ------------------------------------------------------------------------------------------


def test_pull_over_host_stores_on_the_daemon_and_runs_its_config(open_registry: Registry, pm: PM, remote: PM) -> None:
    ref = f"{open_registry.address}/pmt/app:1"
    name = f"{unique('rpull')}:1"
    pulled = json.loads(ok(remote("image", "pull", ref, "--tls-verify=false", "--name", name, "--json")))
    local = json.loads(ok(pm("image", "pull", ref, "--tls-verify=false", "--name", f"{name}-local", "--json", timeout=300)))
    assert set(pulled) == set(local) == PULLED_KEYS  # the same --json shape as a local pull
    assert pulled["reference"] == ref and pulled["digest"] == local["digest"]

    listed = {i["name"]: i for i in json.loads(ok(remote("image", "ls", "--json")))}
    assert listed[name]["digest"] == pulled["digest"] and listed[name]["layers"] == 3

    inspected = json.loads(ok(remote("image", "inspect", name, "--json")))
    assert inspected == json.loads(ok(pm("image", "inspect", name, "--json")))
    assert inspected["config"]["Entrypoint"] == ["/bin/sh", "-c"] and inspected["config"]["WorkingDir"] == "/work"
    assert run_default(pm, name) == EXPECTED_LOG

    text = ok(remote("image", "pull", ref, "--tls-verify=false", "--name", name))
    assert text.startswith(f"pulled {ref} as {name} {pulled['digest']} (")  # the text a local pull prints


def test_pull_over_host_with_tls_and_credentials(secure_registry: Registry, pm: PM, pm_root: Path, remote: PM) -> None:
    ref = f"{secure_registry.address}/pmt/app:1"
    cert = f"--cert-dir={secure_registry.cert_dir}"  # a directory on the daemon's host (this one)
    name = f"{unique('rsecure')}:1"
    pulled = json.loads(ok(remote("image", "pull", ref, cert, "--creds", f"{USER}:{PASSWORD}", "--name", name, "--json")))
    assert pulled["name"] == name
    assert run_default(pm, name) == EXPECTED_LOG
    assert not list((pm_root / "tmp").glob("pull-*")), "the copy's scratch (and its auth file) is gone"

    # wrong or no credentials: the registry's refusal crosses as itself, and nothing is stored
    for creds in (["--creds", f"{USER}:wrong"], []):
        answer = refused(remote("image", "pull", ref, cert, *creds, "--name", "rdenied:1", "--json"), "RegistryAuthFailed")
        assert answer["error"].startswith(f"cannot pull {ref}: registry {secure_registry.address} refused the credentials")
        assert "--creds" in answer["hint"]
    nothing_stored(pm, pm_root, "rdenied:1")

    answer = refused(remote("image", "pull", ref, "--creds", f"{USER}:{PASSWORD}", "--name", "rtls:1", "--json"),
                     "RegistryTlsError")
    assert "--cert-dir" in answer["hint"]
    answer = refused(remote("image", "pull", ref, "--cert-dir", "certs.d", "--name", "rrel:1", "--json"), "InvalidArgument")
    assert "absolute path on the daemon's host" in answer["error"]
    answer = refused(remote("image", "pull", f"{secure_registry.address}/pmt/app:none", cert, "--creds", f"{USER}:{PASSWORD}",
                            "--json"), "RegistryImageNotFound")
    assert "skopeo list-tags" in answer["hint"]
    nothing_stored(pm, pm_root, "rtls:1")


# --- load, push --------------------------------------------------------------------------------------


def test_load_archives_made_by_skopeo_over_host(open_registry: Registry, layout: Path, pm: PM, pm_root: Path, remote: PM,
                                                tmp_path: Path) -> None:
    digest = json.loads(ok(remote("image", "pull", f"{open_registry.address}/pmt/app:1", "--tls-verify=false",
                                  "--name", f"{unique('rref')}:1", "--json")))["digest"]
    docker_archive, oci_archive = tmp_path / "docker.tar", tmp_path / "oci.tar"
    _skopeo_copy(f"oci:{layout}:1", f"docker-archive:{docker_archive}:pmt/app:1")
    _skopeo_copy(f"oci:{layout}:1", f"oci-archive:{oci_archive}:1")
    oci_dir = tmp_path / "oci-dir"
    _skopeo_copy(f"oci:{layout}:1", f"oci:{oci_dir}:1")
    for source in (docker_archive, oci_archive, oci_dir):  # the directory is packed as a tar by the client
        name = f"{unique('rload')}:1"
        loaded = json.loads(ok(remote("image", "load", str(source), "--name", name, "--json")))
        assert set(loaded) == {"name", "digest", "size_bytes", "created_at"}
        assert loaded["name"] == name and loaded["digest"] == digest, source
        config = json.loads(ok(remote("image", "inspect", name, "--json")))["config"]
        assert config["Cmd"] and config["WorkingDir"] == "/work"
    assert run_default(pm, name) == EXPECTED_LOG
    assert not list((pm_root / "tmp").glob("image-load-*")), "the spooled upload is removed"

    # a docker archive names its image: pmt/app:1 -> app:1 (as a local load)
    assert json.loads(ok(remote("image", "load", str(docker_archive), "--json")))["name"] == "app:1"

    # a corrupt blob: the loader's refusal crosses as itself, names the caller's file, stores nothing
    bad = tmp_path / "bad"
    shutil.copytree(oci_dir, bad)
    blob = max((bad / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    answer = refused(remote("image", "load", str(bad), "--name", "rbad:1", "--json"), "BlobDigestMismatch")
    assert answer["error"].startswith(f"cannot load image from {bad}: blob ") and answer["hint"]
    nothing_stored(pm, pm_root, "rbad:1")

    # a symlink out of the directory is refused by the client: nothing is sent
    escape = tmp_path / "escape"
    shutil.copytree(oci_dir, escape)
    (escape / "blobs" / "sha256" / ("0" * 64)).symlink_to("/etc/shadow")
    answer = refused(remote("image", "load", str(escape), "--name", "resc:1", "--json"), "ImageFormatError")
    assert "is a symbolic link out of the directory" in answer["error"]


def test_push_over_host_and_pull_it_back(open_registry: Registry, secure_registry: Registry, pm: PM, remote: PM) -> None:
    src = f"{unique('rsrc')}:1"
    ok(remote("image", "pull", f"{open_registry.address}/pmt/app:1", "--tls-verify=false", "--name", src))
    digest = json.loads(ok(remote("image", "inspect", src, "--json")))["digest"]
    ref = f"{open_registry.address}/pmt/rpushed:2"
    pushed = json.loads(ok(remote("image", "push", src, ref, "--tls-verify=false", "--json")))
    assert pushed == {"name": src, "reference": ref, "digest": pushed["digest"]} and pushed["digest"].startswith("sha256:")
    assert ok(remote("image", "push", src, ref, "--tls-verify=false")).startswith(f"pushed {src} to {ref} (manifest sha256:")
    back = json.loads(ok(pm("image", "pull", ref, "--tls-verify=false", "--name", f"{unique('rback')}:2", "--json",
                            timeout=300)))
    assert back["digest"] == digest

    secure = f"{secure_registry.address}/pmt/rpushed:3"
    cert = f"--cert-dir={secure_registry.cert_dir}"
    refused(remote("image", "push", src, secure, cert, "--creds", f"{USER}:wrong", "--json"), "RegistryAuthFailed")
    ok(remote("image", "push", src, secure, cert, "--creds", f"{USER}:{PASSWORD}"))
    refused(remote("image", "push", "rno-such:1", secure, cert, "--json"), "ImageNotFound")


# --- login -------------------------------------------------------------------------------------------


def test_login_then_pull_without_creds(secure_registry: Registry, pm: PM, pm_root: Path, remote: PM, authfile: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(authfile))  # the default auth file of the CLI and of the daemon
    registry = secure_registry.address
    ref = f"{registry}/pmt/app:1"
    cert = f"--cert-dir={secure_registry.cert_dir}"

    answer = refused(pm("image", "login", registry, "-u", USER, "--password-stdin", cert, "--json", input=b"wrong\n",
                        timeout=120), "RegistryAuthFailed")
    assert answer["error"].startswith(f"cannot log in to {registry}: registry {registry} refused the credentials")
    assert not authfile.exists() or registry not in authfile.read_text(), "a refused login stores nothing"

    done = json.loads(ok(pm("image", "login", registry, "-u", USER, "--password-stdin", cert, "--json",
                            input=f"{PASSWORD}\n".encode(), timeout=120)))
    assert done == {"registry": registry, "username": USER, "authfile": str(authfile)}
    assert stat.S_IMODE(authfile.stat().st_mode) == 0o600
    assert registry in json.loads(authfile.read_text())["auths"]
    assert PASSWORD not in authfile.read_text()  # base64 of USER:PASS, as skopeo and podman keep it

    local = f"{unique('rlogin')}:1"
    ok(pm("image", "pull", ref, cert, "--name", local, timeout=300))  # no --creds: the auth file
    assert run_default(pm, local) == EXPECTED_LOG
    ok(remote("image", "pull", ref, cert, "--name", f"{unique('rlogin')}:2"))  # the daemon reads the same file

    out = ok(pm("image", "logout", registry))
    assert out == f"removed the credentials for {registry} from {authfile}\n"
    assert registry not in json.loads(authfile.read_text()).get("auths", {})
    refused(pm("image", "pull", ref, cert, "--name", "rloggedout:1", "--json", timeout=120), "RegistryAuthFailed")
    answer = refused(pm("image", "logout", registry, "--json"), "RegistryError")
    assert "not logged in" in answer["error"]
    nothing_stored(pm, pm_root, "rloggedout:1")

    answer = refused(remote("image", "login", registry, "-u", USER, "--password-stdin", "--json", input=b"x\n"), "Unsupported")
    assert "--creds" in answer["hint"]


def test_the_daemons_skopeo_never_has_the_password_in_its_argv(secure_registry: Registry, remote: PM) -> None:
    """While a pull with --creds runs through the daemon, skopeo's argv holds no password (the daemon
    wrote it into the copy's 0600 auth file); only the caller's own command line has it."""
    ref = f"{secure_registry.address}/pmt/app:1"
    skopeo_argvs: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid.isdigit() else []
                except OSError:
                    continue
                if argv and argv[0].endswith(b"skopeo"):
                    skopeo_argvs.append(b" ".join(argv).decode(errors="replace"))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        ok(remote("image", "pull", ref, f"--cert-dir={secure_registry.cert_dir}", "--creds", f"{USER}:{PASSWORD}",
                  "--name", f"{unique('rps')}:1"))
    finally:
        stop.set()
        watcher.join(10)
    assert any("copy" in a and "--src-authfile=" in a for a in skopeo_argvs), skopeo_argvs
    assert not any(PASSWORD in a for a in skopeo_argvs)
