"""Registry pull/push without a registry: references, skopeo's errors, the auth file, the exported
OCI layout, and pull/push around a fake ``skopeo`` on PATH (the real one: tests/integration/
test_image_registry.py). The stderr samples are what skopeo 1.9 printed against Debian's
docker-registry."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from runtime.config import Paths
from runtime.errors import ImageNotFound, InvalidArgument
from runtime.image_store import ImageStore
from runtime.oci_image import ImageArchive, Platform
from runtime.registry import (
    ImageReference,
    RegistryAuthFailed,
    RegistryDigestMismatch,
    RegistryError,
    RegistryImageNotFound,
    RegistryOptions,
    RegistryPlatformNotFound,
    RegistryTlsError,
    RegistryUnreachable,
    classify_skopeo_error,
    export_oci_layout,
    parse_reference,
    pull,
    push,
    skopeo_message,
)
from tests.unit.test_image_load import TAR, layer, oci_layout

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, expected", [
    ("redis:7", "docker.io/library/redis:7"),
    ("redis", "docker.io/library/redis:latest"),
    ("bitnami/redis", "docker.io/bitnami/redis:latest"),
    ("docker.io/redis:7", "docker.io/library/redis:7"),
    ("index.docker.io/library/redis:7", "docker.io/library/redis:7"),
    ("docker://quay.io/team/app:v1.2", "quay.io/team/app:v1.2"),
    ("localhost:5000/app:1", "localhost:5000/app:1"),
    ("localhost/app", "localhost/app:latest"),
    ("127.0.0.1:5000/a/b/c:x_1", "127.0.0.1:5000/a/b/c:x_1"),
    (f"registry.example/app@{DIGEST}", f"registry.example/app@{DIGEST}"),
    (f"registry.example/app:1@{DIGEST}", f"registry.example/app:1@{DIGEST}"),
    ("my-registry:443/some_app.x/a__b", "my-registry:443/some_app.x/a__b:latest"),
])
def test_references_are_normalised_like_docker(text: str, expected: str) -> None:
    assert str(parse_reference(text)) == expected


def test_reference_parts_and_default_names() -> None:
    ref = parse_reference("localhost:5000/team/app:1")
    assert ref == ImageReference("localhost:5000", "team/app", "1", "")
    assert ref.default_name() == "app:1"
    assert parse_reference("redis:7").default_name() == "redis:7"
    assert parse_reference(f"r.example/app@{DIGEST}").default_name() == "app:sha256-abababababab"
    assert parse_reference(f"r.example/app:2@{DIGEST}").default_name() == "app:2"


@pytest.mark.parametrize("text, what", [
    ("", "expected"),
    ("Redis", "path component"),
    ("app:bad tag", "tag"),
    ("app:-x", "tag"),
    ("app@sha256:abc", "digest"),
    ("app@md5:" + "0" * 32, "digest"),
    ("a//b", "path component"),
    ("reg.example/", "path component"),
    ("bad_host.example:x/app", "registry"),
    ("reg.example/app/", "path component"),
    ("x" * 600, "expected"),
])
def test_bad_references_are_refused_naming_the_part(text: str, what: str) -> None:
    with pytest.raises(InvalidArgument, match=what):
        parse_reference(text)


# --- skopeo's errors ---------------------------------------------------------------------------

REF = parse_reference("127.0.0.1:45123/app:1")


def fatal(msg: str) -> str:
    escaped = msg.replace('"', '\\"')
    return f'time="2026-12-03T08:00:17Z" level=fatal msg="{escaped}"\n'


SAMPLES = {
    "refused": (fatal('initializing source docker://127.0.0.1:45123/app:1: pinging container registry 127.0.0.1:45123: '
                      'Get "http://127.0.0.1:45123/v2/": dial tcp 127.0.0.1:45123: connect: connection refused'),
                RegistryUnreachable, "is not reachable (connection refused)"),
    "no host": (fatal('initializing source docker://nonexistent.invalid/app:1: pinging container registry nonexistent.invalid: '
                      'Get "http://nonexistent.invalid/v2/": dial tcp: lookup nonexistent.invalid on 10.0.0.53:53: no such host'),
                RegistryUnreachable, "no such host"),
    "missing tag": (fatal("initializing source docker://127.0.0.1:45123/app:1: reading manifest 1 in 127.0.0.1:45123/app: "
                          "manifest unknown: manifest unknown"),
                    RegistryImageNotFound, "has no tag 1 in app (manifest unknown)"),
    "unauthorized": (fatal("initializing source docker://127.0.0.1:45123/app:1: reading manifest 1 in 127.0.0.1:45123/app: "
                           "unauthorized: authentication required"),
                     RegistryAuthFailed, "refused the credentials (unauthorized)"),
    "plain http": (fatal('initializing source docker://127.0.0.1:45123/app:1: pinging container registry 127.0.0.1:45123: '
                         'Get "https://127.0.0.1:45123/v2/": http: server gave HTTP response to HTTPS client'),
                   RegistryTlsError, "speaks plain http"),
    "unknown ca": (fatal('initializing source docker://127.0.0.1:45123/app:1: pinging container registry 127.0.0.1:45123: '
                         'Get "https://127.0.0.1:45123/v2/": x509: certificate signed by unknown authority'),
                   RegistryTlsError, "tls with registry"),
    "digest": (fatal("writing blob: happened during read: Digest did not match, expected sha256:fc85, got sha256:73cf"),
               RegistryDigestMismatch, "content does not match its digest"),
    "platform": (fatal('choosing an image from manifest list docker://127.0.0.1:45123/app:1: no image found in manifest list '
                       'for architecture arm64, variant "", OS linux'),
                 RegistryPlatformNotFound, "no image for platform linux/arm64"),
}


@pytest.mark.parametrize("case", sorted(SAMPLES))
def test_skopeo_errors_become_typed_errors_with_hints(case: str) -> None:
    stderr, cls, words = SAMPLES[case]
    exc = classify_skopeo_error("pull", REF, "Getting image source signatures\n" + stderr, platform="linux/arm64")
    assert type(exc) is cls
    assert str(exc).startswith("cannot pull 127.0.0.1:45123/app:1: ")
    assert words in str(exc)
    assert exc.hint
    assert exc.detail and "level=fatal" not in exc.detail


def test_unknown_skopeo_failures_keep_its_message() -> None:
    exc = classify_skopeo_error("push", REF, "something odd\nreally odd happened\n")
    assert type(exc) is RegistryError
    assert str(exc) == "cannot push 127.0.0.1:45123/app:1: skopeo failed: really odd happened"
    assert skopeo_message(fatal('a "quoted" word')) == 'a "quoted" word'
    assert skopeo_message("") == "skopeo failed without a message"


# --- options -----------------------------------------------------------------------------------


def test_creds_go_to_a_private_auth_file_not_argv(tmp_path: Path) -> None:
    args = RegistryOptions(tls_verify=False, creds="alice:se:cret").skopeo_args("src", "127.0.0.1:5000", tmp_path)
    assert args == ["--src-tls-verify=false", f"--src-authfile={tmp_path / 'auth.json'}"]
    assert not any("cret" in a for a in args)
    auth = tmp_path / "auth.json"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    import base64

    entry = json.loads(auth.read_text())["auths"]["127.0.0.1:5000"]["auth"]
    assert base64.b64decode(entry) == b"alice:se:cret"


def test_option_checks(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="either --creds or --authfile"):
        RegistryOptions(creds="a:b", authfile=tmp_path).skopeo_args("src", "r", tmp_path)
    with pytest.raises(InvalidArgument, match="USER:PASS"):
        RegistryOptions(creds="nopassword").skopeo_args("src", "r", tmp_path)
    with pytest.raises(InvalidArgument, match="not a directory"):
        RegistryOptions(cert_dir=tmp_path / "none").skopeo_args("dest", "r", tmp_path)
    with pytest.raises(InvalidArgument, match="does not exist"):
        RegistryOptions(authfile=tmp_path / "none.json").skopeo_args("dest", "r", tmp_path)
    assert RegistryOptions(tls_verify=True, cert_dir=tmp_path).skopeo_args("dest", "r", tmp_path) == [
        "--dest-tls-verify=true", f"--dest-cert-dir={tmp_path}"]


# --- pull and push around a fake skopeo ----------------------------------------------------------

FAKE_SKOPEO = """#!{python}
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_SKOPEO_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if os.environ.get("FAKE_SKOPEO_STDERR"):
    sys.stderr.write(os.environ["FAKE_SKOPEO_STDERR"])
    sys.exit(1)
src, dest = args[-2], args[-1]
print("Getting image source signatures", flush=True)
print("Copying blob sha256:0123", flush=True)
if dest.startswith("oci:"):
    shutil.copytree(os.environ["FAKE_SKOPEO_LAYOUT"], dest[4:].rsplit(":", 1)[0])
else:
    shutil.copytree(src[4:].rsplit(":", 1)[0], os.environ["FAKE_SKOPEO_PUSHED"])
    for a in args:
        if a.startswith("--digestfile="):
            open(a.split("=", 1)[1], "w").write("sha256:" + "cd" * 32)
print("Writing manifest to image destination", flush=True)
"""


def _install_skopeo(script: str, bindir: Path, log: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``script`` as the ``skopeo`` first on PATH, logging to ``log``; returns ``log``."""
    bindir.mkdir()
    exe = bindir / "skopeo"
    exe.write_text(script.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SKOPEO_LOG", str(log))
    return log


@pytest.fixture
def fake_skopeo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return _install_skopeo(FAKE_SKOPEO, tmp_path / "bin", tmp_path / "skopeo.log", monkeypatch)


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(Paths(tmp_path / "state"))


def test_pull_loads_what_skopeo_copied_and_removes_the_scratch(store: ImageStore, tmp_path: Path, fake_skopeo: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SKOPEO_LAYOUT", str(oci_layout(tmp_path / "oci", [(layer([("f", "x")]), TAR)])))
    lines: list[str] = []
    image = pull(store, "localhost:5000/app:1", platform="linux/amd64",
                 options=RegistryOptions(tls_verify=False, creds="u:p"), progress=lines.append)
    assert image.name == "app:1"
    with store.view(image.name) as root:
        assert (root / "f").read_text() == "x"
    assert lines == ["Getting image source signatures", "Copying blob sha256:0123", "Writing manifest to image destination",
                     "verifying and applying the layers"]
    args = json.loads(fake_skopeo.read_text())
    assert args[:2] == ["--command-timeout=3600s", "copy"] and "--override-arch=amd64" in args and "--src-tls-verify=false" in args
    assert args[-2] == "docker://localhost:5000/app:1" and args[-1].endswith(":pulled")
    assert not any("u:p" in a for a in args)
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("case", ["unauthorized", "missing tag", "refused"])
def test_a_failed_pull_stores_nothing_and_leaves_no_scratch(case: str, store: ImageStore, fake_skopeo: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    stderr, cls, _ = SAMPLES[case]
    monkeypatch.setenv("FAKE_SKOPEO_STDERR", stderr)
    with pytest.raises(cls):
        pull(store, "127.0.0.1:45123/app:1", options=RegistryOptions(creds="u:p"))
    assert store.list() == []
    assert list(store.tmp_dir.iterdir()) == []


def test_a_pulled_image_of_another_platform_is_refused(store: ImageStore, tmp_path: Path, fake_skopeo: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SKOPEO_LAYOUT", str(oci_layout(tmp_path / "oci", [(layer([("f", "x")]), TAR)])))
    with pytest.raises(RegistryPlatformNotFound, match="cannot pull localhost/app:1: no image for platform linux/s390x"):
        pull(store, "localhost/app:1", platform="linux/s390x")
    assert store.list() == [] and list(store.tmp_dir.iterdir()) == []


def test_pull_checks_name_and_platform_before_calling_skopeo(store: ImageStore, fake_skopeo: Path) -> None:
    with pytest.raises(InvalidArgument, match="invalid image name"):
        pull(store, "localhost/app:1", name="Bad Name")
    with pytest.raises(InvalidArgument, match="invalid platform"):
        pull(store, "localhost/app:1", platform="amd64")
    assert not fake_skopeo.exists()


def test_push_sends_the_stored_layers_and_config(store: ImageStore, tmp_path: Path, fake_skopeo: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src = oci_layout(tmp_path / "oci", [(layer([("a", "1"), ("d", None)]), TAR), (layer([("d", None), ("d/b", "2")]), TAR)])
    store.load_archive(src, name="two:1", platform="linux/amd64")
    pushed = tmp_path / "pushed"
    monkeypatch.setenv("FAKE_SKOPEO_PUSHED", str(pushed))
    result = push(store, "two:1", "localhost:5000/team/two:9", options=RegistryOptions(tls_verify=False))
    assert (result.name, result.reference, result.digest) == ("two:1", "localhost:5000/team/two:9", "sha256:" + "cd" * 32)
    args = json.loads(fake_skopeo.read_text())
    assert args[-2].endswith(":9") and args[-1] == "docker://localhost:5000/team/two:9"
    assert list(store.tmp_dir.iterdir()) == []

    with ImageArchive(pushed) as archive:  # our own loader reads what was pushed
        resolved = archive.resolve(Platform("linux", "amd64"))
    two = store.get("two:1")
    assert tuple(layer.diff_id for layer in resolved.layers) == two.layers  # the layers, each by digest
    assert resolved.config_digest == two.config_digest and resolved.ref_name == "9"
    assert resolved.config == store.config("two:1")
    again = store.load_archive(pushed, name="back:1", platform="linux/amd64")
    assert again.digest == two.digest and again.layers == two.layers


def test_export_of_an_image_without_config_has_the_host_platform(store: ImageStore, tmp_path: Path) -> None:
    import io
    import tarfile

    tarball = tmp_path / "flat.tar"
    with tarfile.open(tarball, "w") as tar:
        ti = tarfile.TarInfo("hello")
        ti.size = 2
        tar.addfile(ti, io.BytesIO(b"hi"))
    store.import_tarball("flat", tarball)
    export_oci_layout(store, "flat", tmp_path / "out", "latest")
    with ImageArchive(tmp_path / "out") as archive:
        resolved = archive.resolve()
    assert resolved.config.cmd is None and resolved.config.os == "linux"


def test_push_refuses_digests_and_missing_images(store: ImageStore, fake_skopeo: Path) -> None:
    with pytest.raises(InvalidArgument, match="a reference with a digest"):
        push(store, "x", f"localhost/app@{DIGEST}")
    with pytest.raises(ImageNotFound):
        push(store, "nope", "localhost/app:1")
    assert not fake_skopeo.exists()


def test_no_skopeo_is_unsupported_with_a_hint(store: ImageStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from runtime.errors import Unsupported

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(Unsupported, match="skopeo is not installed"):
        pull(store, "localhost/app:1")
    assert list(store.tmp_dir.iterdir()) == []


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_flags_reach_the_engine(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from migrate.api import ImageInfo
    from runtime.registry import PushResult
    from tests.unit.test_image_store_cli import run

    calls: list[tuple[object, ...]] = []

    class Fake:
        def image_pull(self, reference: str, *, name: str | None, platform: str | None, options: RegistryOptions,
                       progress: object) -> ImageInfo:
            calls.append(("pull", reference, name, platform, options))
            return ImageInfo(name or "redis:7", DIGEST, 1024, 0.0)

        def image_push(self, name: str, reference: str, *, options: RegistryOptions, progress: object) -> PushResult:
            calls.append(("push", name, reference, options))
            return PushResult(name, reference, DIGEST)

    assert run(Fake(), "image", "pull", "redis:7", "--tls-verify=false", "--creds", "u:p") == 0  # type: ignore[arg-type]
    assert capsys.readouterr().out == f"pulled docker.io/library/redis:7 as redis:7 {DIGEST} (1.0 KiB)\n"
    assert calls[-1] == ("pull", "redis:7", None, None, RegistryOptions(tls_verify=False, creds="u:p"))

    assert run(Fake(), "image", "pull", "localhost/app:1", "--name", "x:1", "--platform", "linux/arm64",  # type: ignore[arg-type]
               "--tls-verify", "--cert-dir", str(tmp_path), "--authfile", str(tmp_path / "a.json"), "--json") == 0
    assert json.loads(capsys.readouterr().out)["reference"] == "localhost/app:1"
    assert calls[-1] == ("pull", "localhost/app:1", "x:1", "linux/arm64",
                         RegistryOptions(tls_verify=True, cert_dir=tmp_path, authfile=tmp_path / "a.json"))

    assert run(Fake(), "image", "push", "app:1", "localhost:5000/app:2", "--json") == 0  # type: ignore[arg-type]
    assert json.loads(capsys.readouterr().out) == {"name": "app:1", "reference": "localhost:5000/app:2", "digest": DIGEST}

    assert run(Fake(), "--json", "image", "pull", "Bad:Ref") == 125  # type: ignore[arg-type]
    assert json.loads(capsys.readouterr().out)["type"] == "InvalidArgument"
    with pytest.raises(SystemExit):
        run(Fake(), "image", "pull", "a", "--creds", "u:p", "--authfile", "f")  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        run(Fake(), "image", "pull", "a", "--tls-verify=maybe")  # type: ignore[arg-type]


def test_a_platform_missing_from_an_index_names_the_host_platform_by_default() -> None:
    from runtime.oci_image import host_platform

    exc = classify_skopeo_error("pull", REF, SAMPLES["platform"][0])
    assert isinstance(exc, RegistryPlatformNotFound) and exc.wanted == str(host_platform())
    assert "--platform" in (exc.hint or "")


def test_a_local_permission_error_is_not_an_auth_failure() -> None:
    exc = classify_skopeo_error("pull", REF, fatal("creating directory /x/layout: mkdir /x: permission denied"))
    assert type(exc) is RegistryError
    denied = classify_skopeo_error("pull", REF, fatal("reading manifest 1 in r/app: denied: requested access to the resource is denied"))
    assert type(denied) is RegistryAuthFailed


# --- login and logout ----------------------------------------------------------------------------

FAKE_LOGIN_SKOPEO = """#!{python}
import json, os, sys
args = sys.argv[1:]
stdin = sys.stdin.read()
with open(os.environ["FAKE_SKOPEO_LOG"], "a") as log:
    log.write(json.dumps({{"argv": args, "stdin": stdin}}) + "\\n")
if os.environ.get("FAKE_SKOPEO_STDERR"):
    sys.stderr.write(os.environ["FAKE_SKOPEO_STDERR"])
    sys.exit(1)
print("Login Succeeded!" if args[0] == "login" else "Removed login credentials for " + args[-1])
"""


@pytest.fixture
def login_skopeo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    return _install_skopeo(FAKE_LOGIN_SKOPEO, tmp_path / "login-bin", tmp_path / "login.log", monkeypatch)


def _logged(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_the_default_auth_file_is_skopeos() -> None:
    from runtime.registry import default_authfile

    assert default_authfile({"REGISTRY_AUTH_FILE": "/x/auth.json", "XDG_RUNTIME_DIR": "/run/user/7"}) == Path("/x/auth.json")
    assert default_authfile({"XDG_RUNTIME_DIR": "/run/user/7"}) == Path("/run/user/7/containers/auth.json")
    assert default_authfile({}, uid=0) == Path("/run/containers/0/auth.json")


def test_registries_of_login(tmp_path: Path) -> None:
    from runtime.registry import parse_registry

    assert parse_registry("localhost:5000") == "localhost:5000"
    assert parse_registry("docker://quay.io/") == "quay.io"
    assert parse_registry("index.docker.io") == "docker.io"
    for bad in ("", "quay.io/team/x", "a b", "host:port"):
        with pytest.raises(InvalidArgument, match="expected HOST\\[:PORT\\]"):
            parse_registry(bad)


def test_login_gives_the_password_on_stdin_only(login_skopeo: Path, tmp_path: Path) -> None:
    from runtime.registry import login, logout

    path = login("127.0.0.1:5000", "alice", "se:cret word", tls_verify=False, cert_dir=tmp_path)
    assert path == tmp_path / "auth.json"  # $REGISTRY_AUTH_FILE
    (call,) = _logged(login_skopeo)
    assert call == {"argv": ["login", f"--authfile={tmp_path / 'auth.json'}", "--username", "alice", "--password-stdin",
                             "--tls-verify=false", f"--cert-dir={tmp_path}", "127.0.0.1:5000"], "stdin": "se:cret word"}
    assert logout("127.0.0.1:5000", authfile=tmp_path / "other.json") == tmp_path / "other.json"
    assert _logged(login_skopeo)[-1]["argv"] == ["logout", f"--authfile={tmp_path / 'other.json'}", "127.0.0.1:5000"]


def test_login_refuses_what_skopeo_would_mangle(login_skopeo: Path, tmp_path: Path) -> None:
    from runtime.registry import login

    for user, password, words in (("", "p", "user name"), ("a:b", "p", "user name"), ("alice", "", "no password"),
                                  ("alice", "two\nlines", "line break")):
        with pytest.raises(InvalidArgument, match=words):
            login("127.0.0.1:5000", user, password)
    with pytest.raises(InvalidArgument, match="not a directory"):
        login("127.0.0.1:5000", "alice", "p", cert_dir=tmp_path / "none")
    assert not login_skopeo.exists()


@pytest.mark.parametrize("stderr, cls, words", [
    (fatal('authenticating creds for "127.0.0.1:5000": invalid username/password: unauthorized: authentication required'),
     RegistryAuthFailed, "refused the credentials (unauthorized)"),
    (fatal('authenticating creds for "127.0.0.1:5000": pinging container registry 127.0.0.1:5000: Get '
           '"https://127.0.0.1:5000/v2/": http: server gave HTTP response to HTTPS client'), RegistryTlsError, "plain http"),
    (fatal('authenticating creds for "127.0.0.1:5000": pinging container registry 127.0.0.1:5000: Get '
           '"https://127.0.0.1:5000/v2/": x509: certificate signed by unknown authority'), RegistryTlsError, "tls with"),
    (fatal('authenticating creds for "127.0.0.1:5000": pinging container registry 127.0.0.1:5000: Get '
           '"https://127.0.0.1:5000/v2/": dial tcp 127.0.0.1:5000: connect: connection refused'),
     RegistryUnreachable, "not reachable"),
])
def test_a_refused_login_is_a_typed_error(login_skopeo: Path, monkeypatch: pytest.MonkeyPatch, stderr: str,
                                          cls: type, words: str) -> None:
    from runtime.registry import login

    monkeypatch.setenv("FAKE_SKOPEO_STDERR", stderr)
    with pytest.raises(RegistryError) as got:
        login("127.0.0.1:5000", "alice", "wrong")
    assert type(got.value) is cls and words in str(got.value) and got.value.hint
    assert str(got.value).startswith("cannot log in to 127.0.0.1:5000: ")


def test_cli_login_reads_the_password_from_stdin(login_skopeo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from migrate.engine import LocalEngine
    from tests.unit.test_image_store_cli import run

    engine = LocalEngine(tmp_path / "state")
    monkeypatch.setattr(sys, "stdin", io.StringIO("pa ss\n"))
    assert run(engine, "image", "login", "127.0.0.1:5000", "-u", "alice", "--password-stdin",  # type: ignore[arg-type]
               "--tls-verify=false", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"registry": "127.0.0.1:5000", "username": "alice",
                                                   "authfile": str(tmp_path / "auth.json")}
    call = _logged(login_skopeo)[-1]
    assert call["stdin"] == "pa ss" and not any("pa ss" in a for a in call["argv"])  # type: ignore[union-attr]

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal: nowhere to ask
    assert run(engine, "--json", "image", "login", "127.0.0.1:5000", "-u", "alice") == 125  # type: ignore[arg-type]
    assert "--password-stdin" in json.loads(capsys.readouterr().out)["hint"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("p\n"))
    assert run(engine, "--json", "image", "login", "127.0.0.1:5000", "--password-stdin") == 125  # type: ignore[arg-type]
    assert "-u USER" in json.loads(capsys.readouterr().out)["error"]

    assert run(engine, "image", "logout", "127.0.0.1:5000") == 0  # type: ignore[arg-type]
    assert capsys.readouterr().out == f"removed the credentials for 127.0.0.1:5000 from {tmp_path / 'auth.json'}\n"
