"""TLS: usbwire servers and clients talk TLS 1.3; certificates are checked both ways."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.conftest import RunningServer, start_server
from usbwire import ServerUnreachable, client_tls_context, connect, list_devices, server_tls_context


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server(context: ssl.SSLContext) -> Iterator[RunningServer]:
    yield from start_server(ssl=context)


def server_context(ca: trustme.CA, tmp: Path, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    if client_ca is None:
        return server_tls_context(tmp / "server.pem", tmp / "server.pem")
    client_ca.cert_pem.write_to_path(str(tmp / "client-ca.pem"))
    return server_tls_context(tmp / "server.pem", tmp / "server.pem", tmp / "client-ca.pem")


@pytest.fixture
def tls_running(ca: trustme.CA, tmp_path: Path) -> Iterator[RunningServer]:
    yield from tls_server(server_context(ca, tmp_path))


@pytest.fixture
def mtls_running(ca: trustme.CA, tmp_path: Path) -> Iterator[RunningServer]:
    yield from tls_server(server_context(ca, tmp_path, client_ca=ca))


def client_context(ca: trustme.CA, tmp: Path, *, with_cert: bool = False) -> ssl.SSLContext:
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    if not with_cert:
        return client_tls_context(tmp / "ca.pem")
    ca.issue_cert("client-1").private_key_and_cert_chain_pem.write_to_path(str(tmp / "client.pem"))
    return client_tls_context(tmp / "ca.pem", tmp / "client.pem", tmp / "client.pem")


def test_list_and_transfers_over_tls(tls_running: RunningServer, ca: trustme.CA, tmp_path: Path) -> None:
    context = client_context(ca, tmp_path)

    async def main() -> bytes | int:
        devices = await list_devices("127.0.0.1", tls_running.port, ssl=context)
        assert "1-1" in [d.busid for d in devices]
        async with connect("127.0.0.1", "1-1", port=tls_running.port, ssl=context) as device:
            await device.set_configuration(1)
            await device.bulk_transfer(0x01, b"encrypted")
            return await device.bulk_transfer(0x81, 64, timeout=5)

    assert asyncio.run(main()) == b"encrypted"


def test_a_server_certificate_from_another_ca_is_refused(tls_running: RunningServer, tmp_path: Path) -> None:
    context = client_context(trustme.CA(), tmp_path)
    with pytest.raises(ServerUnreachable, match="TLS handshake failed: unable to get local issuer certificate"):
        asyncio.run(list_devices("127.0.0.1", tls_running.port, ssl=context))


def test_an_expired_server_certificate_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    expired = ca.issue_cert("127.0.0.1", not_after=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1))
    expired.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "expired.pem"))
    for running in tls_server(server_tls_context(tmp_path / "expired.pem", tmp_path / "expired.pem")):
        with pytest.raises(ServerUnreachable, match="expired"):
            asyncio.run(list_devices("127.0.0.1", running.port, ssl=client_context(ca, tmp_path)))


def test_mutual_tls_needs_a_client_certificate(mtls_running: RunningServer, ca: trustme.CA, tmp_path: Path) -> None:
    without = client_context(ca, tmp_path)
    with pytest.raises(ServerUnreachable, match=r"TLS handshake failed|require a client certificate"):
        asyncio.run(list_devices("127.0.0.1", mtls_running.port, ssl=without))
    with_cert = client_context(ca, tmp_path, with_cert=True)
    devices = asyncio.run(list_devices("127.0.0.1", mtls_running.port, ssl=with_cert))
    assert "1-1" in [d.busid for d in devices]


def test_a_plain_client_gets_nothing_and_tls_clients_are_still_served(
    tls_running: RunningServer, ca: trustme.CA, tmp_path: Path
) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the plain client sees a TLS alert or a close
        asyncio.run(list_devices("127.0.0.1", tls_running.port, timeout=5))
    devices = asyncio.run(list_devices("127.0.0.1", tls_running.port, ssl=client_context(ca, tmp_path)))
    assert devices


def test_certs_helper_and_the_cli_end_to_end(tmp_path: Path) -> None:
    usbwire = [sys.executable, "-m", "usbwire"]
    certs = tmp_path / "site"
    made = subprocess.run(
        [*usbwire, "certs", "init", str(certs), "--server-name", "127.0.0.1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert subprocess.run([*usbwire, "certs", "client", str(certs), "laptop"], check=False).returncode == 0
    assert oct((certs / "laptop.key").stat().st_mode & 0o777) == "0o600"
    serve = subprocess.Popen(
        [*usbwire, "serve", "--host", "127.0.0.1", "--port", "0", "--control", "none",
         "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
         "--client-ca", str(certs / "ca.pem")],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert serve.stderr is not None
        port = 0
        for line in serve.stderr:
            if "listening on 127.0.0.1:" in line:
                port = int(line.rsplit(":", 1)[1])
                break
        tls = ["--tls", "--ca", str(certs / "ca.pem")]
        client = ["--cert", str(certs / "laptop.pem"), "--key", str(certs / "laptop.key")]
        listed = subprocess.run(
            [*usbwire, "list", "-r", "127.0.0.1", "--port", str(port), *tls, *client],
            capture_output=True,
            text=True,
            check=False,
        )
        assert listed.returncode == 0 and "1-1: " in listed.stdout, listed.stderr
        refused = subprocess.run(
            [*usbwire, "list", "-r", "127.0.0.1", "--port", str(port), *tls],
            capture_output=True,
            text=True,
            check=False,
        )
        assert refused.returncode == 1 and refused.stderr.startswith("usbwire: error: ")
    finally:
        serve.terminate()
        serve.wait(10)
