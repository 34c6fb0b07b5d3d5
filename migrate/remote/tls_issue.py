"""A small certificate authority for daemons and their clients (``pymigrate tls init/issue``).

Layout of a PKI directory (default /etc/pymigrate/tls)::

    ca.crt  ca.key          the CA (self-signed; the key is 0600 and never leaves this machine)
    HOST.crt HOST.key       one certificate per host or client, signed by the CA

Certificates are what ``daemon --tls-cert/--tls-key/--tls-ca`` and clients' ``--tls-*`` take:
ECDSA P-256, SHA-256. A host certificate names the addresses peers dial in subjectAltName (gRPC
checks the name dialed against it: an IP literal must be an IP SAN, a name a DNS SAN) and carries
BOTH serverAuth and clientAuth extended key usages, because a daemon is also a client: it dials
the target daemon of a migration with the same certificate. ``client_only`` leaves out
serverAuth (a scheduler's or operator's certificate). The CA key is only read, never rewritten;
an existing CA or host certificate is not overwritten unless ``force`` is given.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runtime.errors import InvalidArgument

DEFAULT_DIR = Path("/etc/pymigrate/tls")
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_DAYS = 3650
HOST_DAYS = 825  # the CA/Browser forum's old maximum; a private CA may pick anything
BACKDATE = datetime.timedelta(minutes=5)  # tolerate peers whose clocks lag a little


@dataclass(frozen=True)
class Issued:
    """Paths of a written certificate and its key, and what it names."""

    cert: Path
    key: Path
    common_name: str
    not_after: datetime.datetime
    ips: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, key_encipherment=not ca, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
        data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False,
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # born 0600: no window for others
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o600)  # O_CREAT's mode is masked by umask and ignored for an existing file
    os.replace(tmp, path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _refuse_existing(paths: tuple[Path, ...], what: str, force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise InvalidArgument(f"{what} already exists: {', '.join(existing)}",
                            hint="pass --force to replace it (certificates signed so far stop being trusted for a new ca)")


def init_ca(directory: Path = DEFAULT_DIR, *, days: int = CA_DAYS, name: str = "pymigrate ca", force: bool = False) -> Issued:
    """Create ``directory``/ca.key (0600) and a self-signed ``ca.crt`` valid for ``days``.

    Raises:
        InvalidArgument: the CA files exist and ``force`` is false.
        InvalidArgument: ``days`` is not positive.
    """
    if days <= 0:
        raise InvalidArgument(f"invalid validity {days} days: expected a positive number")
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    _refuse_existing((cert_path, key_path), "a ca", force)
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = now + datetime.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return Issued(cert_path, key_path, name, not_after)


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA of ``directory``; InvalidArgument (with a ``tls init`` hint) when missing or unusable."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise InvalidArgument(f"no ca in {directory}: {exc.filename} is missing",
                              hint=f"create one first: pymigrate tls init --dir {directory}") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidArgument(f"cannot read the ca in {directory}: {exc}", hint="expected PEM files from pymigrate tls init") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise InvalidArgument(f"cannot use the ca in {directory}: {CA_KEY} does not match {CA_CERT}")
    return cert, key


def _sans(ips: tuple[str, ...], dns: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for value in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError as exc:
            raise InvalidArgument(f"invalid --ip {value!r}: expected an IPv4 or IPv6 address",
                                  hint="names go in --dns") from exc
    for value in dns:
        if not value or any(c.isspace() for c in value) or value.startswith("."):
            raise InvalidArgument(f"invalid --dns {value!r}: expected a host name")
        names.append(x509.DNSName(value))
    return names


def _split_host(host: str, ips: tuple[str, ...], dns: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The HOST argument is named too: as an IP SAN when it is an address, else as a DNS SAN."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return ips, dns if host in dns else (host, *dns)
    return (ips if host in ips else (host, *ips)), dns


def issue(host: str, directory: Path = DEFAULT_DIR, *, ips: tuple[str, ...] = (), dns: tuple[str, ...] = (),
          days: int = HOST_DAYS, client_only: bool = False, force: bool = False) -> Issued:
    """Write ``directory``/HOST.crt and HOST.key (0600), signed by the CA in ``directory``.

    Args:
        host: the common name and file stem; also a SAN (IP or DNS by its form) unless client_only.
        ips, dns: further addresses and names peers dial this host by.
        client_only: only clientAuth and no SANs from ``host`` (a scheduler's certificate).

    Raises:
        InvalidArgument: no CA, a bad address or name, a host name that is no file name.
        InvalidArgument: HOST.crt or HOST.key exists and ``force`` is false.
    """
    if not host or "/" in host or host.startswith(".") or host == "ca":
        raise InvalidArgument(f"invalid host {host!r}: expected a host name or address (it names the files)")
    if days <= 0:
        raise InvalidArgument(f"invalid validity {days} days: expected a positive number")
    ca_cert, ca_key = load_ca(directory)
    if not client_only:
        ips, dns = _split_host(host, ips, dns)
    cert_path, key_path = directory / f"{host}.crt", directory / f"{host}.key"
    _refuse_existing((cert_path, key_path), f"a certificate for {host}", force)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client_only else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    sans = _sans(ips, dns)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    _write_key(key_path, key)
    _write_cert(cert_path, builder.sign(ca_key, hashes.SHA256()))
    return Issued(cert_path, key_path, host, not_after, tuple(ips), tuple(dns))
