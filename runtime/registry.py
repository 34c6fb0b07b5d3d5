"""Pulling images from and pushing them to OCI registries, through skopeo.

``pull`` runs ``skopeo copy docker://REF oci:DIR:pulled`` into a scratch directory under the
state root's tmp/ and loads that OCI layout with the same code as ``image load``
(runtime/oci_image.py: every blob verified again, layers applied with whiteouts, the config
kept); the scratch directory is removed whatever happens, and nothing is stored unless the whole
image was fetched and verified. ``push`` writes the stored image as an OCI layout (one layer: the
flattened rootfs, plus the stored config) and runs ``skopeo copy oci:DIR:TAG docker://REF``.

Why skopeo and not our own registry client (docs/images.md): it is packaged by Debian and kept
up to date there, speaks every registry's token and basic auth, credential helpers and auth
files, TLS variants (``--cert-dir``, plain http), retries, and verifies every manifest and blob
digest. What it prints on failure is mapped to typed errors here (``classify_skopeo_error``).

References follow Docker's rules (``parse_reference``): ``redis:7`` is
``docker.io/library/redis:7``; the first path component is a registry when it has a ``.`` or a
``:`` or is ``localhost``; no tag and no digest means ``:latest``.

Credentials: ``--creds USER:PASS`` is written to an auth file (0600) in the scratch directory,
so the password never appears in skopeo's argv (``ps``); ``--authfile`` is passed through;
without either, skopeo finds its own (``$REGISTRY_AUTH_FILE``, ``${XDG_RUNTIME_DIR}/containers/auth.json``,
``~/.docker/config.json``), where ``login`` (``skopeo login --password-stdin``: the password on
its stdin, never in an argv) keeps them; ``logout`` removes them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Callable, Mapping, cast

from runtime.errors import ImageError, InvalidArgument, Unsupported

if TYPE_CHECKING:  # the store is imported where it is used: RegistryOptions and the errors cross gRPC without it
    from runtime.image_store import Image, ImageStore

log = logging.getLogger(__name__)

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DEFAULT_TAG = "latest"
LAYOUT_TAG = "pulled"  # the tag of the one image in a pull's scratch OCI layout
MAX_REFERENCE_CHARS = 512
SKOPEO_TIMEOUT_S = 3600  # a whole copy (skopeo --command-timeout; the wait for its exit after that is a backstop)

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]{1,5})?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 1 << 20

Progress = Callable[[str], None]  # one line of skopeo's report ("Copying blob sha256:..."), as it comes


# --- errors ------------------------------------------------------------------------------------


class RegistryError(ImageError):
    """A pull or push failed at the registry (or in skopeo). Subclasses say what the caller can do.

    Tree (all under ``ImageError``)::

        RegistryError               anything else skopeo reported (``detail`` is its message)
        ├── RegistryUnreachable     nothing answers at the address (refused, no such host, timeout)
        ├── RegistryAuthFailed      the registry wants other credentials (401, denied)
        ├── RegistryImageNotFound   no such repository or tag (manifest unknown)
        ├── RegistryTlsError        TLS failed: plain http, unknown CA, bad certificate
        ├── RegistryDigestMismatch  content differs from its digest (corrupt or tampered)
        └── RegistryPlatformNotFound  the image has no variant for the wanted platform
    """

    def __init__(self, operation: str, reference: str, reason: str, *, detail: str = "", hint: str | None = None) -> None:
        super().__init__(f"cannot {operation} {reference}: {reason}", hint=hint)
        self.operation = operation
        self.reference = reference
        self.reason = reason
        self.detail = detail


class RegistryUnreachable(RegistryError):
    pass


class RegistryAuthFailed(RegistryError):
    pass


class RegistryImageNotFound(RegistryError):
    pass


class RegistryTlsError(RegistryError):
    pass


class RegistryDigestMismatch(RegistryError):
    pass


class RegistryPlatformNotFound(RegistryError):
    def __init__(self, operation: str, reference: str, wanted: str, available: tuple[str, ...], *, detail: str = "") -> None:
        there = f"; it has {', '.join(available)}" if available else ""
        super().__init__(operation, reference, f"no image for platform {wanted}{there}", detail=detail,
                         hint="choose one with --platform OS/ARCH[/VARIANT]")
        self.wanted = wanted
        self.available = available


# --- references --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageReference:
    """A registry image reference, normalised (``redis:7`` -> docker.io/library/redis:7)."""

    registry: str
    repository: str
    tag: str = ""
    digest: str = ""

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def default_name(self) -> str:
        """The store name a pull gives by default: the last path component and the tag
        (``app:1``); a reference by digest only gets ``app:sha256-<12 hex digits>``."""
        base = self.repository.rsplit("/", 1)[-1]
        tag = self.tag or f"sha256-{self.digest.split(':', 1)[1][:12]}"
        return f"{base}:{tag}"


def parse_reference(text: str) -> ImageReference:
    """``[REGISTRY/]PATH[:TAG][@sha256:HEX]``, Docker's rules (module docstring).

    Raises:
        InvalidArgument: not a reference (names what is wrong in it).
    """
    original = text
    if not isinstance(text, str) or not text or len(text) > MAX_REFERENCE_CHARS:
        raise InvalidArgument(f"invalid image reference {original!r}: expected [REGISTRY/]PATH[:TAG][@sha256:DIGEST]")
    text = text.removeprefix("docker://")
    digest = ""
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise InvalidArgument(f"invalid image reference {original!r}: digest {digest!r} is not sha256:<64 hex digits>")
    tag = ""
    head, slash, last = text.rpartition("/")
    if ":" in last:
        last, tag = last.split(":", 1)
        if not _TAG.fullmatch(tag):
            raise InvalidArgument(f"invalid image reference {original!r}: tag {tag!r} is not [A-Za-z0-9_][A-Za-z0-9_.-]*")
    components = [*head.split("/"), last] if slash else [last]
    first = components[0]
    if len(components) > 1 and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, path = first, components[1:]
        if not _DOMAIN.fullmatch(registry):
            raise InvalidArgument(f"invalid image reference {original!r}: registry {registry!r} is not HOST[:PORT]")
        if registry in DOCKER_HUB_ALIASES:
            registry = DOCKER_HUB
    else:
        registry, path = DOCKER_HUB, components
    if registry == DOCKER_HUB and len(path) == 1:
        path = ["library", *path]
    for component in path:
        if not _COMPONENT.fullmatch(component):
            raise InvalidArgument(f"invalid image reference {original!r}: path component {component!r} is not "
                                  "lower-case letters and digits with single separators (. _ __ -)")
    if not tag and not digest:
        tag = DEFAULT_TAG
    return ImageReference(registry, "/".join(path), tag, digest)


# --- options -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryOptions:
    """How to talk to the registry. ``tls_verify`` None: skopeo's default (verify; https)."""

    tls_verify: bool | None = None
    cert_dir: Path | None = None
    creds: str | None = field(default=None, repr=False)  # USER:PASS; never in a repr, a log line or an argv
    authfile: Path | None = None

    def skopeo_args(self, side: str, registry: str, work: Path) -> list[str]:
        """skopeo copy's ``--src-*`` (``side`` "src") or ``--dest-*`` flags; ``--creds`` becomes an
        auth file in ``work`` (mode 0600) so the password is not in any argv."""
        if self.creds is not None and self.authfile is not None:
            raise InvalidArgument("give either --creds or --authfile, not both")
        args: list[str] = []
        if self.tls_verify is not None:
            args.append(f"--{side}-tls-verify={'true' if self.tls_verify else 'false'}")
        if self.cert_dir is not None:
            if not self.cert_dir.is_dir():
                raise InvalidArgument(f"certificate directory {self.cert_dir} is not a directory",
                                      hint="it holds the registry's CA as *.crt (and a client *.cert/*.key pair)")
            args.append(f"--{side}-cert-dir={self.cert_dir}")
        if self.creds is not None:
            user, sep, password = self.creds.partition(":")
            if not sep or not user:
                raise InvalidArgument("invalid --creds: expected USER:PASS")
            auth = base64.b64encode(f"{user}:{password}".encode()).decode()
            path = work / "auth.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"auths": {registry: {"auth": auth}}}, f)
            args.append(f"--{side}-authfile={path}")
        elif self.authfile is not None:
            if not self.authfile.is_file():
                raise InvalidArgument(f"auth file {self.authfile} does not exist")
            args.append(f"--{side}-authfile={self.authfile}")
        return args


@dataclass(frozen=True)
class PushResult:
    name: str  # the stored image
    reference: str  # where it went (normalised)
    digest: str  # the manifest digest the registry has (skopeo --digestfile)


# --- skopeo's errors ---------------------------------------------------------------------------

# phrases of skopeo's messages (lower case), tried in the order of classify_skopeo_error
_PLATFORM = ("no image found in manifest list", "choosing image instance", "no matching manifest for")
_DIGEST_PHRASES = ("digest did not match", "does not match provided manifest digest", "digest mismatch",
                   "does not match digest", "manifest does not match")
# "denied:" is the registry's error code (a bare "denied" would match a local "permission denied")
_AUTH = ("unauthorized", "authentication required", "denied:", "access to the resource is denied", "invalid username/password",
         "incorrect username or password", "status 401", "status 403")
_NOT_FOUND = ("manifest unknown", "name unknown", "repository name not known", "not found: manifest",
              "status 404", "404 (not found)")
_PLAIN_HTTP = "server gave http response to https client"
_TLS = ("x509:", "tls:", "certificate")
_UNREACHABLE = ("connection refused", "no such host", "i/o timeout", "network is unreachable", "no route to host",
                "connection reset by peer", "server misbehaving", "temporary failure in name resolution")
_POLICY = ("policy.json", "trust policy", "not allowed by policy", "rejected by policy")


def skopeo_message(stderr: str) -> str:
    """skopeo's error message out of its stderr (logrus ``level=fatal msg="..."``), else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        m = re.search(r'level=(?:fatal|error) msg="((?:[^"\\]|\\.)*)"', line)
        if m:
            return m.group(1).replace('\\"', '"').replace("\\\\", "\\")
    return lines[-1] if lines else "skopeo failed without a message"


def _first(low: str, phrases: tuple[str, ...]) -> str:
    return next((p for p in phrases if p in low), "")


def classify_skopeo_error(operation: str, ref: ImageReference, stderr: str, *, platform: str = "") -> RegistryError:
    """The typed error for a failed ``skopeo copy`` (``operation`` "pull" or "push")."""
    detail = skopeo_message(stderr)
    low = detail.lower()
    where = str(ref)
    registry = ref.registry

    def has(phrases: tuple[str, ...]) -> str:
        return _first(low, phrases)

    if has(_PLATFORM):
        from runtime.oci_image import host_platform

        return RegistryPlatformNotFound(operation, where, platform or str(host_platform()), (), detail=detail)
    if has(_DIGEST_PHRASES):
        return RegistryDigestMismatch(operation, where, f"content does not match its digest ({detail})", detail=detail,
                                      hint="the registry served corrupt or altered data; nothing was stored")
    if phrase := has(_AUTH):
        return RegistryAuthFailed(operation, where, f"registry {registry} refused the credentials ({phrase})", detail=detail,
                                  hint="give credentials with --creds USER:PASS or --authfile FILE "
                                       "(written by 'skopeo login' or 'docker login'); a private repository "
                                       "that does not exist is refused the same way")
    if phrase := has(_NOT_FOUND):
        what = f"tag {ref.tag}" if ref.tag and not ref.digest else f"digest {ref.digest}" if ref.digest else "it"
        return RegistryImageNotFound(operation, where, f"registry {registry} has no {what} in {ref.repository} ({phrase})",
                                     detail=detail, hint=f"list the tags with: skopeo list-tags docker://{registry}/{ref.repository}")
    if _PLAIN_HTTP in low:
        return RegistryTlsError(operation, where, f"registry {registry} speaks plain http, not https", detail=detail,
                                hint="for a registry without TLS (e.g. on localhost) add --tls-verify=false")
    if phrase := has(_TLS):
        return RegistryTlsError(operation, where, f"tls with registry {registry} failed ({detail})", detail=detail,
                                hint="give the registry's CA certificate with --cert-dir DIR (DIR/*.crt), "
                                     "or --tls-verify=false for a registry you trust on a safe network")
    if phrase := has(_UNREACHABLE):
        return RegistryUnreachable(operation, where, f"registry {registry} is not reachable ({phrase})", detail=detail,
                                   hint=f"is the registry running, and is {registry} its address and port?")
    if has(_POLICY):
        return RegistryError(operation, where, f"the containers trust policy refused it ({detail})", detail=detail,
                             hint="see /etc/containers/policy.json (containers-policy.json(5))")
    return RegistryError(operation, where, f"skopeo failed: {detail}", detail=detail)


# --- running skopeo ----------------------------------------------------------------------------


def _skopeo() -> str:
    exe = shutil.which("skopeo")
    if exe is None:
        raise Unsupported("registries (image pull, push, login)", "skopeo is not installed", hint="apt-get install skopeo")
    return exe


def _run_copy(args: list[str], *, operation: str, ref: ImageReference, work: Path, progress: Progress | None,
              platform: str = "") -> None:
    """``skopeo copy ARGS``: its report lines to ``progress``, stderr kept for the error."""
    from runtime.scratch import held

    argv = [_skopeo(), f"--command-timeout={SKOPEO_TIMEOUT_S}s", *args]
    log.debug("skopeo %s", " ".join(args))
    err_path = work / "skopeo.stderr"
    # skopeo holds the scratch dir too (runtime/scratch.py): killed with us, it may go on writing
    # there for a while, and a sweep must not remove the dir under it
    with open(err_path, "w+") as err, held(work) as lock:
        # stderr to a file, not a pipe: reading stdout line by line must not block on a full stderr pipe
        with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                              cwd=work, start_new_session=True, pass_fds=(lock,)) as proc:
            try:
                stdout = cast(IO[str], proc.stdout)
                for line in stdout:
                    if line.strip() and progress is not None:
                        progress(line.strip())
                rc = proc.wait(timeout=60)
            except BaseException:
                proc.kill()
                raise
        err.seek(0)
        stderr = err.read()
    if rc != 0:
        raise classify_skopeo_error(operation, ref, stderr, platform=platform)


def _platform_args(platform: str | None) -> list[str]:
    if not platform:
        return []
    from runtime.oci_image import parse_platform

    p = parse_platform(platform)
    args = [f"--override-os={p.os}", f"--override-arch={p.architecture}"]
    if p.variant:
        args.append(f"--override-variant={p.variant}")
    return args


# --- pull --------------------------------------------------------------------------------------


def pull(store: ImageStore, reference: str, *, name: str | None = None, platform: str | None = None,
         options: RegistryOptions | None = None, progress: Progress | None = None) -> Image:
    """Fetch ``reference`` with skopeo and load it as image ``name`` (default: ``ref.default_name()``).

    Returns the stored image. Nothing is stored unless the whole
    image was fetched and verified; the scratch directory is removed in every case.

    Raises:
        InvalidArgument: a bad reference, name, platform or option.
        RegistryError and its subclasses: the registry or skopeo failed (see the class tree).
        Unsupported: skopeo is not installed.
        ImageError: what loading the OCI layout raises (runtime/oci_image.py).
    """
    from runtime.image_store import validate_name
    from runtime.oci_image import BlobDigestMismatch, PlatformNotFound
    from runtime.scratch import scratch_dir

    ref = parse_reference(reference)
    name = validate_name(name or ref.default_name())
    options = options or RegistryOptions()
    platform_args = _platform_args(platform)
    t0 = time.monotonic()
    # held while it exists (runtime/scratch.py): a sweep in another process keeps it, and the
    # store does not collect blobs meanwhile (skopeo writes them into the blob store directly)
    with scratch_dir(store.tmp_dir, "pull-") as work:
        layout = work / "layout"
        # blobs go straight into the store's blob dir (OCI layout "sha256/<hex>" under it): one
        # this host has is not fetched again, so a layer shared with another image is pulled once
        shared = f"--dest-shared-blob-dir={store.layers.blobs_dir.parent}"
        args = ["copy", *platform_args, "--remove-signatures", *options.skopeo_args("src", ref.registry, work), shared,
                f"docker://{ref}", f"oci:{layout}:{LAYOUT_TAG}"]
        _run_copy(args, operation="pull", ref=ref, work=work, progress=progress, platform=platform or "")
        if progress is not None:
            progress("verifying and applying the layers")
        try:
            image = store.load_archive(layout, name=name, platform=platform, fallback_blobs=True)
        except PlatformNotFound as exc:
            raise RegistryPlatformNotFound("pull", str(ref), exc.wanted, exc.available) from exc
        except BlobDigestMismatch as exc:
            raise RegistryDigestMismatch("pull", str(ref), f"blob {exc.blob} has {exc.actual}, expected {exc.expected}",
                                         hint="the registry served corrupt or altered data; nothing was stored") from exc
    log.info("pulled image=%s from=%s elapsed_ms=%.0f", name, ref, (time.monotonic() - t0) * 1000)
    return image


# --- push --------------------------------------------------------------------------------------


class _HashingWriter:
    """A write-only file that hashes what passes through (``tarfile`` in stream mode needs only write)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        return self.f.write(data)


def _write_blob(blobs: Path, data: bytes) -> dict[str, object]:
    hexd = hashlib.sha256(data).hexdigest()
    (blobs / hexd).write_bytes(data)
    return {"digest": f"sha256:{hexd}", "size": len(data)}


def export_oci_layout(store: ImageStore, name: str, layout: Path, tag: str) -> str:
    """Write flat image ``name`` as an OCI image layout at ``layout`` (must not exist) and return
    the manifest digest. (A layered image is written by runtime/image_layout.py, layers as stored.)

    One uncompressed layer: the flattened rootfs (``ImageStore.export_stream``: numeric owners,
    modes, mtimes, hard links, kept xattrs), so the layers the image was loaded from are not
    reproduced. The config is the stored one (or none: an image from a flat tarball pushes
    without a default command), with this host's platform when the image names none.
    """
    from runtime.oci_image import host_platform

    image = store.get(name)
    config = store.config(name)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    partial = blobs / ".layer.partial"
    with open(partial, "wb") as f:
        writer = _HashingWriter(f)
        store.export_stream(name, cast(BinaryIO, writer))
    layer_hex = writer.h.hexdigest()
    os.rename(partial, blobs / layer_hex)
    host = host_platform()
    if config is not None and config.os and config.architecture:
        os_name, arch, variant = config.os, config.architecture, config.variant
    else:
        os_name, arch, variant = host.os, host.architecture, host.variant
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(image.created_at))
    blob: dict[str, object] = {
        "created": created,
        "architecture": arch,
        "os": os_name,
        "config": config.to_oci() if config else {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_hex}"]},
        "history": [{"created": created, "created_by": f"pymigrate image push (flattened rootfs {image.digest})"}],
    }
    if variant:
        blob["variant"] = variant
    config_desc = _write_blob(blobs, json.dumps(blob, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, **config_desc},
        "layers": [{"mediaType": MEDIA_LAYER_TAR, "digest": f"sha256:{layer_hex}", "size": writer.size}],
    }
    manifest_desc = _write_blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [
        {"mediaType": MEDIA_MANIFEST, **manifest_desc, "annotations": {REF_NAME_ANNOTATION: tag}}]}
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return str(manifest_desc["digest"])


def push(store: ImageStore, name: str, reference: str, *, options: RegistryOptions | None = None,
         progress: Progress | None = None) -> PushResult:
    """Push stored image ``name`` to ``reference`` (a tag; a digest is what the registry answers).

    Raises:
        ImageNotFound: no such image here.
        InvalidArgument: a bad reference (or one with a digest) or option.
        RegistryError and its subclasses, Unsupported: as for ``pull``.
    """
    from runtime.scratch import scratch_dir

    ref = parse_reference(reference)
    if ref.digest:
        raise InvalidArgument(f"cannot push to {ref}: a reference with a digest names content, not a place",
                              hint="push to a tag (REGISTRY/PATH:TAG); the registry answers with the digest")
    image = store.get(name)
    options = options or RegistryOptions()
    t0 = time.monotonic()
    with scratch_dir(store.tmp_dir, "push-") as work:
        layout = work / "layout"
        if image.layers:  # the layers as stored, each blob by its digest
            from runtime.image_layout import write_layout

            write_layout(store, image.name, layout, ref.tag)
        else:
            export_oci_layout(store, image.name, layout, ref.tag)
        digest_file = work / "digest"
        args = ["copy", "--remove-signatures", *options.skopeo_args("dest", ref.registry, work),
                f"--digestfile={digest_file}", f"oci:{layout}:{ref.tag}", f"docker://{ref}"]
        _run_copy(args, operation="push", ref=ref, work=work, progress=progress)
        digest = digest_file.read_text().strip() if digest_file.exists() else ""
    log.info("pushed image=%s to=%s digest=%s elapsed_ms=%.0f", image.name, ref, digest, (time.monotonic() - t0) * 1000)
    return PushResult(image.name, str(ref), digest)


# --- login and logout --------------------------------------------------------------------------

LOGIN_TIMEOUT_S = 120


def parse_registry(text: str) -> str:
    """The ``HOST[:PORT]`` that ``image login`` and ``logout`` take (Docker Hub's aliases are
    ``docker.io``, the key skopeo and podman file its credentials under).

    Raises:
        InvalidArgument: not HOST[:PORT].
    """
    registry = text.removeprefix("docker://").rstrip("/") if isinstance(text, str) else ""
    if not registry or len(registry) > MAX_REFERENCE_CHARS or not _DOMAIN.fullmatch(registry):
        raise InvalidArgument(f"invalid registry {text!r}: expected HOST[:PORT], e.g. quay.io or localhost:5000")
    return DOCKER_HUB if registry in DOCKER_HUB_ALIASES else registry


def default_authfile(env: Mapping[str, str] | None = None, uid: int | None = None) -> Path:
    """The auth file ``skopeo login`` and podman write and ``skopeo copy`` reads first
    (containers-auth.json(5)): ``$REGISTRY_AUTH_FILE``, else ``${XDG_RUNTIME_DIR}/containers/auth.json``,
    else ``/run/containers/UID/auth.json``. A daemon's pulls read its own environment's."""
    env = os.environ if env is None else env
    if env.get("REGISTRY_AUTH_FILE"):
        return Path(env["REGISTRY_AUTH_FILE"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    return Path(f"/run/containers/{os.getuid() if uid is None else uid}/auth.json")


def classify_login_error(operation: str, registry: str, stderr: str) -> RegistryError:
    """The typed error for a failed ``skopeo login`` / ``logout`` (``operation`` "log in to" or "log out of")."""
    detail = skopeo_message(stderr)
    low = detail.lower()
    if phrase := _first(low, _AUTH):
        return RegistryAuthFailed(operation, registry, f"registry {registry} refused the credentials ({phrase})",
                                  detail=detail, hint="check the user name and the password")
    if _PLAIN_HTTP in low:
        return RegistryTlsError(operation, registry, f"registry {registry} speaks plain http, not https", detail=detail,
                                hint="for a registry without TLS (e.g. on localhost) add --tls-verify=false")
    if _first(low, _TLS):
        return RegistryTlsError(operation, registry, f"tls with registry {registry} failed ({detail})", detail=detail,
                                hint="give the registry's CA certificate with --cert-dir DIR (DIR/*.crt), "
                                     "or --tls-verify=false for a registry you trust on a safe network")
    if phrase := _first(low, _UNREACHABLE):
        return RegistryUnreachable(operation, registry, f"registry {registry} is not reachable ({phrase})", detail=detail,
                                   hint=f"is the registry running, and is {registry} its address and port?")
    if "not logged in" in low:
        return RegistryError(operation, registry, "not logged in to it", detail=detail,
                             hint="nothing to remove from that auth file (see --authfile)")
    return RegistryError(operation, registry, f"skopeo failed: {detail}", detail=detail)


def _run_login(argv: list[str], *, operation: str, registry: str, stdin: str = "") -> None:
    log.debug("skopeo %s", " ".join(argv[1:]))  # never the password: it goes to stdin
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=LOGIN_TIMEOUT_S,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        raise RegistryUnreachable(operation, registry, f"registry {registry} did not answer within {LOGIN_TIMEOUT_S}s",
                                  hint=f"is the registry running, and is {registry} its address and port?") from None
    if done.returncode != 0:
        raise classify_login_error(operation, registry, done.stderr)


def login(registry: str, username: str, password: str, *, tls_verify: bool | None = None, cert_dir: Path | None = None,
          authfile: Path | None = None) -> Path:
    """``skopeo login``: check ``username`` and ``password`` with ``registry`` and, when it takes
    them, keep them in ``authfile`` (default ``default_authfile()``: 0600, the file later pulls and
    pushes without ``--creds`` read). The password goes to skopeo's stdin (``--password-stdin``),
    never into an argv. Returns the auth file.

    Raises:
        InvalidArgument: a bad registry, user name, password or option.
        RegistryAuthFailed: the registry refused them (nothing is stored).
        RegistryError and its subclasses, Unsupported: as for ``pull``.
    """
    registry = parse_registry(registry)
    if not username or ":" in username or any(c in username for c in "\n\r\0"):
        raise InvalidArgument(f"invalid user name {username!r} for {registry}: expected a non-empty name without ':'")
    if not password:
        raise InvalidArgument(f"no password for {username} at {registry}")
    if any(c in password for c in "\n\r\0"):
        # skopeo --password-stdin joins the lines it reads: such a password would not be the one given
        raise InvalidArgument(f"the password for {username} at {registry} contains a line break or NUL")
    path = Path(authfile) if authfile is not None else default_authfile()
    argv = [_skopeo(), "login", f"--authfile={path}", "--username", username, "--password-stdin"]
    if tls_verify is not None:
        argv.append(f"--tls-verify={'true' if tls_verify else 'false'}")
    if cert_dir is not None:
        if not Path(cert_dir).is_dir():
            raise InvalidArgument(f"certificate directory {cert_dir} is not a directory",
                                  hint="it holds the registry's CA as *.crt (and a client *.cert/*.key pair)")
        argv.append(f"--cert-dir={cert_dir}")
    _run_login([*argv, registry], operation="log in to", registry=registry, stdin=password)
    log.info("logged in registry=%s user=%s authfile=%s", registry, username, path)
    return path


def logout(registry: str, *, authfile: Path | None = None) -> Path:
    """``skopeo logout``: remove ``registry``'s credentials from ``authfile`` (default
    ``default_authfile()``). Returns the auth file.

    Raises:
        InvalidArgument: a bad registry.
        RegistryError: skopeo failed (e.g. no credentials for it there).
    """
    registry = parse_registry(registry)
    path = Path(authfile) if authfile is not None else default_authfile()
    _run_login([_skopeo(), "logout", f"--authfile={path}", registry], operation="log out of", registry=registry)
    log.info("logged out registry=%s authfile=%s", registry, path)
    return path
