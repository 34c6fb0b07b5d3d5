"""pymigrate errors as the standard ``google.rpc.Status`` (docs/api.md), beside our own trailer.

Go's ``status.FromError(err).Details()``, Java's ``StatusProto.fromThrowable`` and Node's
``grpc-status-details-bin`` readers see only the standard trailer, so every refused call that
carries our ``pymigrate-error-bin`` (migrate/remote/_rpc_errors.py) carries this one too:

- ``ErrorInfo``: ``reason`` is the error class in UPPER_SNAKE (``ContainerNotFound`` ->
  ``CONTAINER_NOT_FOUND``), ``domain`` is ``DOMAIN``, ``metadata`` holds ``type`` (the class name),
  ``hint``, ``phase`` when set, and the error's fields (``name``, ``field``, ``expected`` ...):
  strings as they are, other values as JSON.
- ``BadRequest`` (INVALID_ARGUMENT only): one field violation; ``field`` is the request field the
  error names (InvalidSpec's ``field``) or empty when the error is about the request as a whole.

The status's code and message equal the call's own (clients check that they agree).
``from_status`` reads an ``ErrorInfo`` back into the dictionary ``_rpc_errors`` rebuilds
exceptions from, for a caller that has only the standard trailer.
"""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "pymigrate.io"
DETAILS_KEY = "grpc-status-details-bin"

# the metadata keys that are not the error's own fields
_RESERVED = ("type", "hint", "phase")
# ErrorInfo values are for reading, not for archives: keep the trailer well inside grpc's 8 KiB
_MAX_VALUE_CHARS = 256
_MAX_METADATA_CHARS = 1500


def reason_for(type_name: str) -> str:
    """``ContainerNotFound`` -> ``CONTAINER_NOT_FOUND``; ``OSError`` -> ``OS_ERROR``."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", type_name)
    words = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", words)
    return words.upper()


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return utf8(text[:_MAX_VALUE_CHARS])


def utf8(text: str) -> str:
    """``text`` as protobuf strings must be: valid UTF-8. A name from a hostile archive can hold
    lone surrogates (bytes decoded with surrogateescape); they go as \\udcXX escapes instead of
    failing the whole answer."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _metadata(data: dict[str, Any]) -> dict[str, str]:
    metadata = {"type": utf8(str(data["type"]))}
    for key in ("hint", "phase"):
        if data.get(key):
            metadata[key] = _text(data[key])
    used = sum(len(k) + len(v) for k, v in metadata.items())
    for key, value in (data.get("attrs") or {}).items():
        if value is None or key in _RESERVED:
            continue
        text = _text(value)
        used += len(key) + len(text)
        if used > _MAX_METADATA_CHARS:
            break  # the full record still travels in pymigrate-error-bin
        metadata[utf8(key)] = text
    return metadata


def _packed(message: Any) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def to_status(code: grpc.StatusCode, message: str, data: dict[str, Any]) -> status_pb2.Status:
    """The ``google.rpc.Status`` for an error encoded as ``data`` (type, message, hint, phase, attrs)."""
    info = error_details_pb2.ErrorInfo(reason=reason_for(str(data["type"])), domain=DOMAIN, metadata=_metadata(data))
    details = [_packed(info)]
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field = (data.get("attrs") or {}).get("field")
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=utf8(field) if isinstance(field, str) else "", description=utf8(str(data.get("message") or message))
        )
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    return status_pb2.Status(code=code.value[0], message=utf8(message), details=details)


def trailer(code: grpc.StatusCode, message: str, data: dict[str, Any]) -> tuple[str, bytes]:
    """The ``grpc-status-details-bin`` trailing metadata entry for ``to_status(...)``."""
    from grpc_status import rpc_status

    (entry,) = rpc_status.to_status(to_status(code, message, data)).trailing_metadata
    return entry


def parse(value: bytes | str) -> status_pb2.Status | None:
    """The status a ``grpc-status-details-bin`` value holds, None when it is not one."""
    status = status_pb2.Status()
    try:
        status.ParseFromString(value if isinstance(value, bytes) else value.encode("latin-1"))
    except (DecodeError, UnicodeEncodeError):
        return None
    return status


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The status's ErrorInfo from pymigrate (``DOMAIN``), None without one."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        try:
            if detail.Unpack(info) and info.domain == DOMAIN:
                return info
        except DecodeError:  # a broken detail is no detail: the status code still stands
            return None
    return None


def _value(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, bool, list)) else text


def from_status(status: status_pb2.Status) -> dict[str, Any] | None:
    """The ``_rpc_errors`` record (type, message, hint, phase, attrs) a pymigrate status carries.

    Field values that read as JSON numbers, booleans or lists come back as such, the rest as
    strings (a string field holding "5" comes back as 5: the custom trailer is exact, this is not).
    """
    info = error_info(status)
    if info is None or "type" not in info.metadata:
        return None
    metadata = dict(info.metadata)
    attrs = {k: _value(v) for k, v in metadata.items() if k not in _RESERVED}
    return {
        "type": metadata["type"],
        "message": status.message,
        "hint": metadata.get("hint"),
        "phase": metadata.get("phase"),
        "attrs": attrs,
    }

