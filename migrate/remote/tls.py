"""TLS material for the daemon and its clients (mutual TLS: both sides present certificates).

A daemon listening on TCP presents ``cert``/``key`` and accepts only clients whose certificate
chains to ``ca``; a client presents its own ``cert``/``key`` and accepts only a daemon whose
certificate chains to ``ca``. The same ``TlsConfig`` type describes both ends. Import-light: no
grpc here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.errors import InvalidArgument


@dataclass(frozen=True)
class TlsConfig:
    cert: Path  # PEM certificate chain presented to the other end
    key: Path  # PEM private key of ``cert``
    ca: Path  # PEM CA bundle the other end's certificate must chain to
    server_name: str | None = None  # client only: expected name in the daemon's cert (default: the host)

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(cert, key, ca) as bytes; a missing or unreadable file is an ``InvalidArgument``."""
        out = []
        for what, path in (("certificate", self.cert), ("key", self.key), ("ca", self.ca)):
            try:
                out.append(Path(path).read_bytes())
            except OSError as exc:
                raise InvalidArgument(f"cannot read tls {what} {path}: {(exc.strerror or str(exc)).lower()}",
                                      hint=f"check the path given to --tls-{'cert' if what == 'certificate' else what}") from exc
        return out[0], out[1], out[2]


def tls_from_paths(cert: Path | None, key: Path | None, ca: Path | None, *, who: str) -> TlsConfig | None:
    """A ``TlsConfig`` when all three paths are given, None when none is; else InvalidArgument."""
    given = [p is not None for p in (cert, key, ca)]
    if not any(given):
        return None
    if not all(given):
        raise InvalidArgument(
            f"{who} tls needs --tls-cert, --tls-key and --tls-ca together",
            hint="mutual tls: each side presents a certificate and checks the other's against the ca",
        )
    assert cert is not None and key is not None and ca is not None
    return TlsConfig(cert=Path(cert), key=Path(key), ca=Path(ca))
