"""The per-installation C2PA signing certificate: provenance on every video with nothing configured.

On first use wanrt makes, in its state folder (wanrt/state.py: ``$WANRT_STATE_DIR/provenance``), a self-issued
CA and a signing certificate it issues (EC P-256, digitalSignature, emailProtection as C2PA requires of a
signer), then destroys the CA's private key: the CA can never sign anything else, so trusting it trusts exactly
this installation's signer. ``wanrt provenance show`` prints the chain and where the CA lies, for an operator to
add to the trust anchors of whatever checks the clips (``wanrt provenance verify --trust-anchor``, c2patool,
a newsroom's verifier), or to replace with the organisation's own (``--c2pa-cert``/``--c2pa-key``).

Files: ``ca.pem`` (the CA certificate: the one to trust), ``signer.pem`` (signer then CA, the chain C2PA
embeds), ``signer.key`` (0600). Made in a private sibling folder and renamed into place, so a crash leaves no
half certificate and two processes starting together agree on one.
"""

from __future__ import annotations

import datetime
import os
import platform
import secrets
import shutil
from pathlib import Path

from wanrt.errors import StateError
from wanrt.state import ensure_dir, state_dir
from wanrt.trust.provenance import ProvenanceKey

FOLDER = "provenance"
CA, SIGNER, KEY = "ca.pem", "signer.pem", "signer.key"
SIGNER_YEARS, CA_YEARS = 5, 10


def installation_folder() -> Path:
    return state_dir() / FOLDER


def installation_key() -> ProvenanceKey:
    """This installation's signer, made on first use; StateError (naming the place and the ways out) when the
    state folder cannot hold it."""
    folder = installation_folder()
    if not (folder / KEY).is_file():
        _create(folder)
    key = ProvenanceKey.load(folder / SIGNER, folder / KEY)
    return key.with_origin("installation")


def _create(folder: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    parent = ensure_dir(folder.parent, what="wanrt's per-installation provenance certificate")
    now = datetime.datetime.now(datetime.UTC)
    tag = secrets.token_hex(4)
    host = platform.node() or "unknown host"

    def name(role: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"wanrt {role} {host} {tag}"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wanrt installation (self-issued)")])

    def usage(signer: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=signer, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=not signer,
                             crl_sign=not signer, encipher_only=False, decipher_only=False)

    ca_key, signer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("installation CA")).issuer_name(name("installation CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    signer = (x509.CertificateBuilder().subject_name(name("video signer")).issuer_name(ca.subject)
              .public_key(signer_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=365 * SIGNER_YEARS))
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(usage(True), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    del ca_key  # never written anywhere: the CA signs this one signer and nothing else, ever
    pem = serialization.Encoding.PEM
    partial = parent / f".{FOLDER}.{os.getpid()}.{tag}.partial"
    try:
        partial.mkdir(mode=0o700)
        _write(partial / CA, ca.public_bytes(pem), 0o644)
        _write(partial / SIGNER, signer.public_bytes(pem) + ca.public_bytes(pem), 0o644)
        _write(partial / KEY, signer_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()), 0o600)
        try:
            partial.rename(folder)
        except OSError:
            if not (folder / KEY).is_file():  # not another process's certificate: a real failure
                raise
    except OSError as err:
        raise StateError(f"cannot create the per-installation provenance certificate in {folder}: "
                         f"{err.strerror or err}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def describe(folder: Path | None = None) -> str:
    """The chain, for `wanrt provenance show`: each certificate's subject, issuer, validity and fingerprint."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    folder = folder or installation_folder()
    chain = x509.load_pem_x509_certificates((folder / SIGNER).read_bytes())
    lines = []
    for role, cert in zip(("signer", "CA"), chain, strict=False):
        lines += [f"{role}: {cert.subject.rfc4514_string()}",
                  f"  issuer: {cert.issuer.rfc4514_string()}",
                  f"  valid: {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}",
                  f"  sha256 fingerprint: {cert.fingerprint(hashes.SHA256()).hex(':')}"]
    return "\n".join(lines)
