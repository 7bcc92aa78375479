"""``usbwire certs``: a CA and the certificates a small site needs for TLS, via ``cryptography``.

ca.pem / ca.key            the site's CA (keep ca.key offline once clients are issued)
server.pem / server.key    for ``usbwire serve --tls-cert server.pem --tls-key server.key``
NAME.pem / NAME.key        a client, for ``--cert NAME.pem --key NAME.key``
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from usbwire.errors import UsbwireError


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _issue(
    directory: Path,
    name: str,
    common_name: str,
    *,
    ca: bool,
    server_names: tuple[str, ...] = (),
    days: int = 825,
) -> None:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID as eku  # noqa: N813
        from cryptography.x509.oid import NameOID as oid  # noqa: N813
    except ImportError:
        raise UsbwireError("creating certificates needs cryptography (pip install 'usbwire[tls]')") from None
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(oid.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    if ca:
        issuer, signing_key = subject, key
    else:
        ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        issuer = ca_cert.subject
        loaded = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise UsbwireError(f"{directory / 'ca.key'} is not the EC key 'usbwire certs init' makes")
        signing_key = loaded
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if not ca:
        usage = eku.SERVER_AUTH if server_names else eku.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server_names:
        alternative: list[x509.GeneralName] = []
        for host in server_names:
            try:
                alternative.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alternative.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(alternative), critical=False)
    cert = builder.sign(signing_key, hashes.SHA256())
    encoding = serialization.Encoding.PEM
    _write(directory / f"{name}.pem", cert.public_bytes(encoding), private=False)
    key_bytes = key.private_bytes(
        encoding,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(directory / f"{name}.key", key_bytes, private=True)


def init(directory: str | os.PathLike[str], server_names: tuple[str, ...]) -> list[str]:
    """A new CA and a server certificate for ``server_names`` (host names and addresses)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if (path / "ca.key").exists():
        raise UsbwireError(f"{path / 'ca.key'} exists: this directory already has a CA")
    _issue(path, "ca", "usbwire CA", ca=True, days=3650)
    _issue(path, "server", server_names[0], ca=False, server_names=server_names)
    return ["ca.pem", "ca.key", "server.pem", "server.key"]


def client(directory: str | os.PathLike[str], name: str) -> list[str]:
    """A client certificate named ``name``, signed by the directory's CA."""
    path = Path(directory)
    if not (path / "ca.key").exists():
        raise UsbwireError(f"no CA in {path} (run 'usbwire certs init' first)")
    _issue(path, name, name, ca=False)
    return [f"{name}.pem", f"{name}.key"]
