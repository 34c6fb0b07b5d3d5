"""How pymigrate errors cross gRPC: exception -> status code + trailing metadata, and back.

The server (migrate/remote/service.py) calls ``encode``; the client (migrate/remote/client.py) calls ``decode``,
so a caller sees the same exception class with the same message, hint, phase and data attributes
whether the engine is local or remote.

Status codes (most specific class first):

    ChecksumMismatch, ContainerLost                          DATA_LOSS
    ContainerNotFound, ImageNotFound, CheckpointNotFound      NOT_FOUND
    InvalidState, IncompatibleHost                           FAILED_PRECONDITION
    Busy (another operation holds the container)             ABORTED
    ContainerExists                                          ALREADY_EXISTS
    InvalidArgument, ArchiveError (UnsafeMember ...), UnsafeArchive   INVALID_ARGUMENT
    ImageFormatError, NotARootfsTarball, ImageConfigError    INVALID_ARGUMENT
    BlobDigestMismatch, LayerDigestMismatch                  DATA_LOSS
    PlatformNotFound                                         NOT_FOUND
    registries (runtime/registry.py):
      RegistryImageNotFound, RegistryPlatformNotFound        NOT_FOUND
      RegistryAuthFailed, RegistryTlsError                   FAILED_PRECONDITION (the registry's, not the daemon's)
      RegistryUnreachable                                    UNAVAILABLE
      RegistryDigestMismatch                                 DATA_LOSS
      RegistryError (what skopeo said, unclassified)         UNKNOWN
    SigningKeyError                                          INVALID_ARGUMENT
    Unsupported                                              UNIMPLEMENTED
    PermissionError, SignatureError (signature policy)       PERMISSION_DENIED
    MigrationTimeout, FreezeTimeout, CriuTimeout             DEADLINE_EXCEEDED
    PeerError, TransferError, OutcomeUnknown                 UNAVAILABLE
    AuthError                                                UNAUTHENTICATED
    RpcCancelled                                             CANCELLED
    OSError(ENOSPC)                                          RESOURCE_EXHAUSTED
    NotImplementedError (an engine method not written yet)   UNIMPLEMENTED, generic message
    any other ContainerError / MigrationError                INTERNAL, with its message
    anything else                                            INTERNAL, generic message only

The error classes of runtime/errors.py and migrate/errors.py, and those of the image modules
(``IMAGE_ERROR_MODULES``: registry, OCI archive, layer and config errors), cross by name; the
image modules are imported on first use, not by the CLI's every remote call.

Trailing metadata: ``pymigrate-error-type`` (the class name, ASCII, for grpcurl users),
``pymigrate-error-bin`` (JSON: type, message, hint, phase, attrs) and the standard
``grpc-status-details-bin`` (google.rpc.Status with ErrorInfo and, for bad input, BadRequest:
migrate/remote/rpc_status.py, for Go/Java/Node clients; ``decode`` falls back to it). Unexpected exceptions send
neither: their text may hold host details, so only an incident id goes out and the traceback
stays in the daemon's log. Errors without our metadata (the channel failed, an old daemon, a
proxy) are mapped from the status code alone.
"""

from __future__ import annotations

import errno as errno_mod
import functools
import json
from pathlib import Path
from typing import Any

import grpc

from migrate import errors as merrors
from runtime import errors as rerrors

TYPE_KEY = "pymigrate-error-type"
DATA_KEY = "pymigrate-error-bin"

# grpc's default limit for received metadata is 8 KiB; stay well below it.
_MAX_MESSAGE_CHARS = 2000
_MAX_DATA_BYTES = 4000


class RpcCancelled(merrors.MigrationError):
    """The caller cancelled the call or its deadline passed; raised into the engine by progress."""


_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (merrors.ChecksumMismatch, grpc.StatusCode.DATA_LOSS),
    (merrors.ContainerLost, grpc.StatusCode.DATA_LOSS),
    (rerrors.ContainerNotFound, grpc.StatusCode.NOT_FOUND),
    (rerrors.ImageNotFound, grpc.StatusCode.NOT_FOUND),
    (merrors.CheckpointNotFound, grpc.StatusCode.NOT_FOUND),
    (rerrors.InvalidState, grpc.StatusCode.FAILED_PRECONDITION),
    (rerrors.Busy, grpc.StatusCode.ABORTED),
    (merrors.IncompatibleHost, grpc.StatusCode.FAILED_PRECONDITION),
    (rerrors.ContainerExists, grpc.StatusCode.ALREADY_EXISTS),
    (rerrors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (merrors.SignatureError, grpc.StatusCode.PERMISSION_DENIED),
    (merrors.SigningKeyError, grpc.StatusCode.INVALID_ARGUMENT),
    (merrors.ArchiveError, grpc.StatusCode.INVALID_ARGUMENT),
    (rerrors.UnsafeArchive, grpc.StatusCode.INVALID_ARGUMENT),
    (rerrors.Unsupported, grpc.StatusCode.UNIMPLEMENTED),
    (PermissionError, grpc.StatusCode.PERMISSION_DENIED),
    (merrors.MigrationTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (rerrors.FreezeTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (rerrors.CriuTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (merrors.PeerError, grpc.StatusCode.UNAVAILABLE),
    (merrors.TransferError, grpc.StatusCode.UNAVAILABLE),
    (merrors.OutcomeUnknown, grpc.StatusCode.UNAVAILABLE),
    (merrors.AuthError, grpc.StatusCode.UNAUTHENTICATED),
    (RpcCancelled, grpc.StatusCode.CANCELLED),
)


# modules defining image errors of their own (beside runtime/errors.py's ImageError tree)
IMAGE_ERROR_MODULES = ("runtime.registry", "runtime.oci_image", "runtime.layer_store", "runtime.image_store",
                       "runtime.image_config")


@functools.cache
def _image_codes() -> tuple[tuple[type[BaseException], grpc.StatusCode], ...]:
    from runtime import image_config, image_store, layer_store, oci_image, registry

    return (
        (registry.RegistryImageNotFound, grpc.StatusCode.NOT_FOUND),
        (registry.RegistryPlatformNotFound, grpc.StatusCode.NOT_FOUND),
        (registry.RegistryAuthFailed, grpc.StatusCode.FAILED_PRECONDITION),
        (registry.RegistryTlsError, grpc.StatusCode.FAILED_PRECONDITION),
        (registry.RegistryUnreachable, grpc.StatusCode.UNAVAILABLE),
        (registry.RegistryDigestMismatch, grpc.StatusCode.DATA_LOSS),
        (registry.RegistryError, grpc.StatusCode.UNKNOWN),
        (oci_image.BlobDigestMismatch, grpc.StatusCode.DATA_LOSS),
        (layer_store.LayerDigestMismatch, grpc.StatusCode.DATA_LOSS),
        (oci_image.PlatformNotFound, grpc.StatusCode.NOT_FOUND),
        (oci_image.ImageFormatError, grpc.StatusCode.INVALID_ARGUMENT),
        (image_store.NotARootfsTarball, grpc.StatusCode.INVALID_ARGUMENT),
        (image_config.ImageConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    )


@functools.cache
def known_classes() -> dict[str, type[BaseException]]:
    """Every error class that crosses by name: runtime/errors.py, migrate/errors.py and the image
    modules' (``IMAGE_ERROR_MODULES``)."""
    import importlib

    classes: dict[str, type[BaseException]] = {}
    modules = (rerrors, merrors, *(importlib.import_module(m) for m in IMAGE_ERROR_MODULES))
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, (rerrors.ContainerError, merrors.MigrationError)):
                classes[value.__name__] = value
    classes["RpcCancelled"] = RpcCancelled
    classes["PermissionError"] = PermissionError
    classes["OSError"] = OSError
    return classes


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, bool]:
    """The status code for ``exc`` and whether its message may be shown to the caller."""
    if isinstance(exc, rerrors.ImageError):
        for cls, code in _image_codes():
            if isinstance(exc, cls):
                return code, True
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code, True
    if isinstance(exc, OSError) and exc.errno == errno_mod.ENOSPC:
        return grpc.StatusCode.RESOURCE_EXHAUSTED, True
    if isinstance(exc, (rerrors.ContainerError, merrors.MigrationError)):
        return grpc.StatusCode.INTERNAL, True
    return grpc.StatusCode.INTERNAL, False


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        items = [_jsonable(v) for v in value]
        return None if any(i is _SKIP for i in items) else items
    return _SKIP


_SKIP = object()


def encode(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]:
    """Status code, details and trailing metadata for a typed error ``exc``.

    Callers handle the "not public" case (see ``status_for``) themselves; this function assumes
    the message may be shown.
    """
    code, _ = status_for(exc)
    known = known_classes()
    name = type(exc).__name__ if known.get(type(exc).__name__) is type(exc) else _nearest_known(exc)
    if isinstance(exc, OSError):
        message = exc.strerror or str(exc)
        attrs = {"errno": exc.errno, "strerror": exc.strerror, "filename": _jsonable(exc.filename)}
    else:
        message = getattr(exc, "message", None) or str(exc)
        attrs = {}
        for key, value in vars(exc).items():
            if key in ("message", "hint", "phase") or key.startswith("_"):
                continue
            v = _jsonable(value)
            if v is not _SKIP:
                attrs[key] = v
    message = message[:_MAX_MESSAGE_CHARS]
    data = {
        "type": name,
        "message": message,
        "hint": getattr(exc, "hint", None),
        "phase": getattr(exc, "phase", None),
        "attrs": attrs,
    }
    blob = json.dumps(data).encode()
    if len(blob) > _MAX_DATA_BYTES:
        data["attrs"] = {}
        blob = json.dumps(data).encode()[:_MAX_DATA_BYTES]
    details = str(exc)[:_MAX_MESSAGE_CHARS]
    from migrate.remote import rpc_status  # the standard google.rpc.Status beside our trailer

    return code, details, ((TYPE_KEY, name), (DATA_KEY, blob), rpc_status.trailer(code, details, data))


def _nearest_known(exc: BaseException) -> str:
    known = known_classes()
    for cls in type(exc).__mro__:
        if known.get(cls.__name__) is cls:
            return cls.__name__
    return "OSError" if isinstance(exc, OSError) else "MigrationError"


def _rebuild(data: dict[str, Any]) -> BaseException | None:
    cls = known_classes().get(str(data.get("type")))
    if cls is None:
        return None
    message = str(data.get("message") or "")
    attrs = data.get("attrs") or {}
    if issubclass(cls, OSError):
        if attrs.get("filename") is not None:
            return cls(attrs.get("errno"), attrs.get("strerror") or message, attrs["filename"])
        return cls(attrs.get("errno"), attrs.get("strerror") or message)
    # Bypass __init__: subclasses format their own messages from other arguments; we already
    # have the final message and restore the data attributes one by one.
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.message = message  # type: ignore[attr-defined]
    exc.hint = data.get("hint")  # type: ignore[attr-defined]
    if issubclass(cls, merrors.MigrationError):
        exc.phase = data.get("phase")  # type: ignore[attr-defined]
    for key, value in attrs.items():
        setattr(exc, key, tuple(value) if isinstance(value, list) else value)
    return exc


def _from_standard_details(metadata: Any) -> BaseException | None:
    """The error a ``grpc-status-details-bin`` ErrorInfo of ours names, for a peer (or proxy) that
    sent only the standard trailer; our own trailer is preferred because it keeps field types."""
    for key, value in metadata or ():
        if key == "grpc-status-details-bin":
            from migrate.remote import rpc_status

            status = rpc_status.parse(value)
            data = rpc_status.from_status(status) if status is not None else None
            return _rebuild(data) if data is not None else None
    return None


def _connect_failure(details: str) -> str:
    """gRPC's "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.2:7070: Failed
    to connect to remote host: Connection refused" as "connection refused": the cause, without
    the resolver's internals (``--debug`` still shows the original)."""
    if "failed to connect" not in details.lower():
        return details
    cause = details.rsplit(": ", 1)[-1].strip().rstrip(".")
    return cause.lower() or details


def decode(
    code: grpc.StatusCode | None, details: str | None, metadata: Any, target: str, method: str = ""
) -> BaseException:
    """The exception a failed call to the daemon at ``target`` stands for."""
    details = details or ""
    for key, value in metadata or ():
        if key == DATA_KEY:
            try:
                data = json.loads(value if isinstance(value, (bytes, str)) else b"")
            except ValueError:
                break
            if isinstance(data, dict):
                exc = _rebuild(data)
                if exc is not None:
                    return exc
            break
    standard = _from_standard_details(metadata)
    if standard is not None:
        return standard
    where = f"the daemon at {target}"
    lowered = details.lower()
    if code == grpc.StatusCode.UNAVAILABLE:
        if "hostname verification" in lowered:  # the daemon's certificate names another host
            return merrors.AuthError(
                f"{where} refused the tls handshake: its certificate does not name {target}: {details}",
                hint="dial the address (or name) the daemon's certificate names, or give it a certificate for this one",
            )
        if any(w in lowered for w in ("handshake", "ssl", "tls", "certificate")):
            return merrors.AuthError(
                f"{where} refused the tls handshake: {details}",
                hint="check --tls-cert, --tls-key and --tls-ca (the daemon verifies client certificates)",
            )
        return merrors.TransferError(
            f"{where} is unreachable: {_connect_failure(details)}",
            hint="check that 'pymigrate daemon' runs there and that the address is right",
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return merrors.AuthError(
            f"{where} refused our credentials", hint="check --token-file and the tls client certificate"
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return merrors.AuthError(f"{where} denied the call: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return merrors.MigrationTimeout(f"the call {method} to {where} timed out" if method else f"the call to {where} timed out")
    if code == grpc.StatusCode.CANCELLED:
        return merrors.TransferError(f"the call to {where} was cancelled: {details}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return rerrors.Unsupported(
            method or "this call", f"{where} does not implement it", hint="run the same pymigrate version on both ends"
        )
    name = code.name.lower() if code is not None else "unknown"
    return merrors.PeerError(f"{where} failed: {name}: {details}")
