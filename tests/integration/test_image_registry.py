"""``pymigrate image pull`` / ``image push`` against real registries (Debian's docker-registry).

Each registry runs on 127.0.0.1 on a free port with its config and filesystem storage under the
test's tmp dir: ``open`` (plain http, no auth: ``--tls-verify=false``) and ``secure`` (TLS with a
self-signed certificate made by openssl, htpasswd basic auth made by ``htpasswd -B``: ``--cert-dir``
with ``--creds`` or ``--authfile``). Every registry started here is stopped (terminate, then kill).

The image is built by hand as an OCI layout of three layers (the busybox rootfs gzip'ed, then a
plain layer, then a gzip layer with a whiteout and an opaque directory) with ENTRYPOINT, CMD, ENV
and WORKDIR, and pushed with skopeo itself; pymigrate pulls it and runs it with no command.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.fakes.image_tars import layer
from tests.fakes.oci_layouts import write_oci_layout
from tests.integration.cli_helpers import ok, refused, unique

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "busybox")]

USER, PASSWORD = "alice", "s3cret-pass"
CMD = "echo ran; pwd; echo $GREETING; cat /replace.txt; ls /opq; test -e /etc/gone.txt || echo gone-absent"
EXPECTED_LOG = ["ran", "/work", "hello-from-registry", "new", "upper.txt", "gone-absent", ""]
PM = Callable[..., subprocess.CompletedProcess]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (scripts/setup.sh installs it)")
    return path


def _free_port(bind: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((bind, 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    proc: subprocess.Popen[bytes]
    address: str  # BIND:PORT (127.0.0.1:PORT unless started with another bind address)
    storage: Path
    log: Path
    cert_dir: Path | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_registry(work: Path, *, secure: bool = False, bind: str = "127.0.0.1") -> Registry:
    """docker-registry on a free port of ``bind`` (an address of this namespace); ``secure``: TLS
    (self-signed) + htpasswd."""
    exe = _need("docker-registry")
    work.mkdir(parents=True, exist_ok=True)
    address = f"{bind}:{_free_port(bind)}"
    lines = ["version: 0.1", "log:", "  level: warn", "storage:", "  filesystem:", f"    rootdirectory: {work / 'storage'}",
             "http:", f"  addr: {address}"]
    cert_dir = None
    if secure:
        _need("openssl")
        _need("htpasswd")
        cert_dir = work / "certs.d"
        cert_dir.mkdir()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(work / "key.pem"),
                        "-out", str(cert_dir / "ca.crt")], check=True, capture_output=True, timeout=60)
        htpasswd = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, timeout=60).stdout
        (work / "htpasswd").write_bytes(htpasswd)
        lines += ["  tls:", f"    certificate: {cert_dir / 'ca.crt'}", f"    key: {work / 'key.pem'}",
                  "auth:", "  htpasswd:", "    realm: pymigrate-test", f"    path: {work / 'htpasswd'}"]
    config = work / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    log = work / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT)
    registry = Registry(proc, address, work / "storage", log, cert_dir)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"docker-registry exited {proc.returncode}: {log.read_text()}")
        try:
            with socket.create_connection((bind, int(address.rsplit(":", 1)[1])), timeout=1):
                return registry
        except OSError:
            if time.monotonic() > deadline:
                registry.stop()
                raise AssertionError(f"docker-registry did not listen on {address}: {log.read_text()}") from None
            time.sleep(0.05)


# --- the image -----------------------------------------------------------------------------------


def build_layout(pm_root: Path, out: Path) -> Path:
    """An OCI layout of three layers over the busybox rootfs, tagged ``1``."""
    from runtime.config import Paths
    from runtime.image_store import ImageStore

    base = io.BytesIO()
    ImageStore(Paths(pm_root)).export_stream("busybox", base)
    plain = layer([("etc", None), ("etc/gone.txt", "gone\n"), ("replace.txt", "old\n"), ("opq", None),
                  ("opq/lower.txt", "lower\n"), ("work", None)])
    upper = layer([("etc", None), ("etc/.wh.gone.txt", ""), ("replace.txt", "new\n"), ("opq", None),
                  ("opq/.wh..wh..opq", ""), ("opq/upper.txt", "upper\n")])
    run = {"Entrypoint": ["/bin/sh", "-c"], "Cmd": [CMD], "WorkingDir": "/work",
           "Env": ["GREETING=hello-from-registry", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}
    return write_oci_layout(out, [(base.getvalue(), True), (plain, False), (upper, True)], run)


def skopeo_push(layout: Path, registry: Registry, ref: str, *extra: str) -> None:
    tls = [f"--dest-cert-dir={registry.cert_dir}"] if registry.cert_dir else ["--dest-tls-verify=false"]
    r = subprocess.run([_need("skopeo"), "copy", *tls, *extra, f"oci:{layout}:1", f"docker://{registry.address}/{ref}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layout(pm_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_layout(pm_root, tmp_path_factory.mktemp("layout") / "oci")


@pytest.fixture(scope="module")
def open_registry(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    registry = start_registry(tmp_path_factory.mktemp("open-registry"))
    try:
        skopeo_push(layout, registry, "pmt/app:1")
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def secure_registry(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    registry = start_registry(tmp_path_factory.mktemp("secure-registry"), secure=True)
    try:
        skopeo_push(layout, registry, "pmt/app:1", f"--dest-creds={USER}:{PASSWORD}")
        yield registry
    finally:
        registry.stop()


def nothing_stored(pm: PM, pm_root: Path, name: str) -> None:
    names = [i["name"] for i in json.loads(ok(pm("image", "ls", "--json")))]
    assert name not in names
    assert not list((pm_root / "tmp").glob("pull-*")) and not list((pm_root / "tmp").glob("image-*"))


def run_default(pm: PM, image: str) -> list[str]:
    """Run ``image`` with no command (its ENTRYPOINT + CMD) and return its log lines."""
    cname = unique("reg")
    ok(pm("run", "-d", "--name", cname, image))
    try:
        assert ok(pm("wait", cname, timeout=60)).strip() == "0"
        return ok(pm("logs", cname)).split("\n")
    finally:
        pm("rm", "-f", cname)


# --- tests ---------------------------------------------------------------------------------------


def test_pull_a_multi_layer_image_and_run_its_config(open_registry: Registry, pm: PM, pm_root: Path) -> None:
    ref = f"{open_registry.address}/pmt/app:1"
    pulled = json.loads(ok(pm("image", "pull", ref, "--tls-verify=false", "--json", timeout=300)))
    assert pulled["name"] == "app:1" and pulled["reference"] == ref
    config = json.loads(ok(pm("image", "inspect", "app:1", "--json")))["config"]
    assert config["Entrypoint"] == ["/bin/sh", "-c"] and config["WorkingDir"] == "/work"

    from runtime.config import Paths
    from runtime.image_store import ImageStore

    store = ImageStore(Paths(pm_root))
    assert len(store.get("app:1").layers) == 3
    with store.view("app:1") as rootfs:
        assert not (rootfs / "etc/gone.txt").exists()
        assert sorted(p.name for p in (rootfs / "opq").iterdir()) == ["upper.txt"]
    assert not list((pm_root / "tmp").glob("pull-*"))
    assert run_default(pm, "app:1") == EXPECTED_LOG


def test_layers_already_stored_are_not_fetched_again(open_registry: Registry, pm: PM, layout: Path, tmp_path: Path) -> None:
    """An image sharing the 3 layers of pmt/app:1 under one more: a pull fetches only the new
    layer's blob (counted in the registry's own access log), then runs on all four layers."""
    ok(pm("image", "pull", f"{open_registry.address}/pmt/app:1", "--tls-verify=false", timeout=300))
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes())
    raws = []
    for desc in manifest["layers"]:
        blob = (layout / "blobs/sha256" / desc["digest"][7:]).read_bytes()
        gz = desc["mediaType"].endswith("+gzip")
        raws.append((gzip.decompress(blob) if gz else blob, gz))
    more = write_oci_layout(tmp_path / "more", [*raws, (layer([("more.txt", "more\n")]), False)], config["config"])
    skopeo_push(more, open_registry, "pmt/more:1")
    mark = open_registry.log.stat().st_size
    ok(pm("image", "pull", f"{open_registry.address}/pmt/more:1", "--tls-verify=false", timeout=300))
    with open(open_registry.log, "rb") as f:
        f.seek(mark)
        fetched = set(re.findall(rb"GET /v2/pmt/more/blobs/(sha256:[0-9a-f]{64})", f.read()))
    shared = {d["digest"].encode() for d in manifest["layers"]}
    assert fetched and not fetched & shared, fetched  # the config and the new layer only
    assert run_default(pm, "more:1") == EXPECTED_LOG


def test_pull_by_digest(open_registry: Registry, pm: PM, layout: Path) -> None:
    skopeo = _need("skopeo")
    digest = subprocess.run([skopeo, "inspect", "--tls-verify=false", "--format", "{{.Digest}}",
                             f"docker://{open_registry.address}/pmt/app:1"], capture_output=True, text=True,
                            check=True, timeout=60).stdout.strip()
    out = ok(pm("image", "pull", f"{open_registry.address}/pmt/app@{digest}", "--tls-verify=false", timeout=300))
    assert out.startswith(f"pulled {open_registry.address}/pmt/app@{digest} as app:sha256-{digest[7:19]} ")


def test_pull_with_credentials_over_tls(secure_registry: Registry, pm: PM, pm_root: Path, tmp_path: Path) -> None:
    ref = f"{secure_registry.address}/pmt/app:1"
    cert = f"--cert-dir={secure_registry.cert_dir}"
    ok(pm("image", "pull", ref, cert, "--creds", f"{USER}:{PASSWORD}", "--name", "secure:1", timeout=300))
    # a docker config.json style auth file
    authfile = tmp_path / "config.json"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    authfile.write_text(json.dumps({"auths": {secure_registry.address: {"auth": token}}}))
    ok(pm("image", "pull", ref, cert, "--authfile", str(authfile), "--name", "secure:2", timeout=300))
    assert run_default(pm, "secure:2") == EXPECTED_LOG

    # no CA given: the self-signed certificate is refused
    answer = refused(pm("image", "pull", ref, "--creds", f"{USER}:{PASSWORD}", "--name", "secure:3", "--json"),
                     "RegistryTlsError")
    assert "--cert-dir" in answer["hint"]
    nothing_stored(pm, pm_root, "secure:3")


def test_wrong_credentials_are_a_typed_error_and_nothing_is_stored(secure_registry: Registry, pm: PM, pm_root: Path) -> None:
    ref = f"{secure_registry.address}/pmt/app:1"
    for creds in ([], ["--creds", f"{USER}:wrong"]):
        answer = refused(pm("image", "pull", ref, f"--cert-dir={secure_registry.cert_dir}", *creds, "--name", "denied:1",
                            "--json", timeout=120), "RegistryAuthFailed")
        assert answer["error"].startswith(f"cannot pull {ref}: registry {secure_registry.address} refused the credentials")
        assert "--creds" in answer["hint"]
    nothing_stored(pm, pm_root, "denied:1")


def test_missing_tag_and_plain_http(open_registry: Registry, pm: PM, pm_root: Path) -> None:
    ref = f"{open_registry.address}/pmt/app:no-such-tag"
    answer = refused(pm("image", "pull", ref, "--tls-verify=false", "--json", timeout=120), "RegistryImageNotFound")
    assert "has no tag no-such-tag in pmt/app (manifest unknown)" in answer["error"]
    assert "skopeo list-tags" in answer["hint"]
    nothing_stored(pm, pm_root, "app:no-such-tag")

    answer = refused(pm("image", "pull", f"{open_registry.address}/pmt/app:1", "--name", "plain:1", "--json"),
                     "RegistryTlsError")
    assert "speaks plain http" in answer["error"] and "--tls-verify=false" in answer["hint"]
    nothing_stored(pm, pm_root, "plain:1")


def test_a_stopped_registry_is_unreachable(layout: Path, pm: PM, pm_root: Path, tmp_path: Path) -> None:
    registry = start_registry(tmp_path / "reg")
    try:
        skopeo_push(layout, registry, "pmt/app:1")
    finally:
        registry.stop()
    answer = refused(pm("image", "pull", f"{registry.address}/pmt/app:1", "--tls-verify=false", "--name", "gone:1",
                        "--json", timeout=120), "RegistryUnreachable")
    assert "is not reachable (connection refused)" in answer["error"]
    nothing_stored(pm, pm_root, "gone:1")


def test_a_corrupt_blob_is_a_digest_mismatch(layout: Path, pm: PM, pm_root: Path, tmp_path: Path) -> None:
    registry = start_registry(tmp_path / "reg")
    try:
        # a layer no pull has stored yet (one this host has is never fetched again: nothing to corrupt)
        noise = layer([("noise", os.urandom(256 << 10).hex())])
        skopeo_push(write_oci_layout(tmp_path / "noise", [(noise, True)], {"Cmd": ["sh"]}), registry, "pmt/app:1")
        # the biggest blob in the registry's storage is that layer: flip one byte of it
        blob = max(registry.storage.rglob("blobs/sha256/*/*/data"), key=lambda p: p.stat().st_size)
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
        answer = refused(pm("image", "pull", f"{registry.address}/pmt/app:1", "--tls-verify=false", "--name", "bad:1",
                            "--json", timeout=120), "RegistryDigestMismatch")
        assert "does not match its digest" in answer["error"]
    finally:
        registry.stop()
    nothing_stored(pm, pm_root, "bad:1")


def test_push_a_stored_image_and_pull_it_back(open_registry: Registry, secure_registry: Registry, pm: PM) -> None:
    ok(pm("image", "pull", f"{open_registry.address}/pmt/app:1", "--tls-verify=false", "--name", "src:1", timeout=300))
    src = json.loads(ok(pm("image", "inspect", "src:1", "--json")))
    ref = f"{open_registry.address}/pmt/flat:2"
    pushed = json.loads(ok(pm("image", "push", "src:1", ref, "--tls-verify=false", "--json", timeout=300)))
    assert pushed["reference"] == ref and pushed["digest"].startswith("sha256:")
    back = json.loads(ok(pm("image", "pull", ref, "--tls-verify=false", "--name", "back:2", "--json", timeout=300)))
    assert back["digest"] == src["digest"]  # the same rootfs, now from one layer
    assert json.loads(ok(pm("image", "inspect", "back:2", "--json")))["config"] == src["config"]
    assert run_default(pm, "back:2") == EXPECTED_LOG

    # with TLS and credentials too; bad credentials on push are the same typed error
    secure = f"{secure_registry.address}/pmt/flat:3"
    cert = f"--cert-dir={secure_registry.cert_dir}"
    refused(pm("image", "push", "src:1", secure, cert, "--creds", f"{USER}:wrong", "--json", timeout=300),
            "RegistryAuthFailed")
    ok(pm("image", "push", "src:1", secure, cert, "--creds", f"{USER}:{PASSWORD}", timeout=300))
    ok(pm("image", "pull", secure, cert, "--creds", f"{USER}:{PASSWORD}", "--name", "back:3", timeout=300))
