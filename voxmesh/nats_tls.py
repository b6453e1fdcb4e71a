"""TLS between the hosts of a deployment: every NATS connection (clients to servers, and the
servers' cluster routes to each other) is encrypted and the server is verified against the
deployment's own CA; routes use mutual TLS, so no stranger joins the cluster.

    python -m voxmesh.nats_tls deploy/certs nats-1 nats-2 nats-3   # a CA and a server certificate

writes `ca.crt`, `ca.key` (keep it offline), `tls.crt` and `tls.key` (the servers'; its names are
the hosts given, plus localhost) with keys 0600. Clients need only `ca.crt`: set NATS_CA to its
path and use `tls://` URLs (`voxmesh.mesh.connect` does the rest). In Kubernetes, a
cert-manager Certificate writing the same keys into the `nats-tls` Secret does the same job.

The single-machine `make run` keeps NATS on 127.0.0.1 only, where TLS adds nothing.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import sys
from collections.abc import Iterable
from pathlib import Path

CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
VALID_DAYS = 825


def client_context(ca_file: str | None = None) -> ssl.SSLContext | None:
    """The TLS context for NATS clients: verify the server against NATS_CA (or `ca_file`);
    None when no CA is configured (plain connections, e.g. the embedded server on loopback)."""
    ca = ca_file or os.environ.get("NATS_CA", "").strip()
    if not ca:
        return None
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def write_certs(directory: Path, hosts: Iterable[str]) -> None:
    """A new CA and a server certificate for `hosts` (DNS names or IP addresses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Voxmesh NATS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    names: list[x509.GeneralName] = []
    for host in [*hosts, "localhost", "127.0.0.1"]:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voxmesh-nats")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # Server for clients, and client too: cluster routes present it to each other.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip

    def private(path: Path, pem: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)

    pem = serialization.Encoding.PEM
    plain = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8
    (directory / CA_FILE).write_bytes(ca.public_bytes(pem))
    private(directory / "ca.key", ca_key.private_bytes(pem, pkcs8, plain))
    (directory / CERT_FILE).write_bytes(cert.public_bytes(pem))
    private(directory / KEY_FILE, key.private_bytes(pem, pkcs8, plain))


def server_tls_conf(directory: str) -> str:
    """The nats-server configuration that turns TLS on, for clients and for cluster routes
    (mutual TLS), with the files of `write_certs` under `directory`."""
    block = (f'cert_file: "{directory}/{CERT_FILE}", key_file: "{directory}/{KEY_FILE}", '
             f'ca_file: "{directory}/{CA_FILE}"')  # fmt: skip
    return (
        "# TLS for clients and for cluster routes (voxmesh/nats_tls.py).\n"
        f"tls {{ {block}, timeout: 5 }}\n"
        f"cluster {{ tls {{ {block}, verify: true, timeout: 5 }} }}\n"
    )


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m voxmesh.nats_tls DIRECTORY HOST [HOST ...]")
    write_certs(Path(sys.argv[1]), sys.argv[2:])
    print(f"wrote {CA_FILE}, ca.key, {CERT_FILE} and {KEY_FILE} to {sys.argv[1]}")
