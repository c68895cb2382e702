"""A private certificate authority for one team stack, and the one certificate it signs.

SeaweedFS's gRPC servers (master, volume, filer, S3) authenticate a caller only by mutual TLS:
without it, any local process could list, read, overwrite or delete every object through
them, S3 keys and JWTs notwithstanding. So team-up makes a CA of the stack's own and a
certificate signed by it, which every SeaweedFS server presents and asks its callers for.
SeaweedFS does not check host names, only that the peer's certificate chains to the CA, so one
certificate serves every server and their clients.

The CA's private key is used once, to sign, and never written: nothing can issue another
certificate the servers would accept. Deleting the folder makes a new CA and certificate at
the next team-up (after a team-down: the running servers hold the old ones).
"""

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mnist_dense.files import private_folder, write_private

CA, CERTIFICATE, KEY = "ca.crt", "weed.crt", "weed.key"
VALID_DAYS = 3650  # a stack on one machine; renewed by deleting the folder


_SIGNS_CERTIFICATES = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mnist team stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def ensure(folder: Path) -> dict[str, Path]:
    """The CA certificate, the certificate and its key in `folder` (0700; files 0600), made
    unless all three exist; {"ca", "cert", "key"}: their paths."""
    folder = private_folder(folder)
    paths = {"ca": folder / CA, "cert": folder / CERTIFICATE, "key": folder / KEY}
    if all(path.is_file() for path in paths.values()):
        return paths
    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("mnist team stack CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_SIGNS_CERTIFICATES, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("seaweedfs"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private(paths["key"], _pem_key(key))
    write_private(paths["cert"], certificate.public_bytes(serialization.Encoding.PEM).decode())
    write_private(paths["ca"], ca.public_bytes(serialization.Encoding.PEM).decode())  # last
    return paths
