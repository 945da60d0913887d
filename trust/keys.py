"""Signing keys on disk: an ed25519 private key (PKCS#8 PEM, 0600) and its public key (SubjectPublicKeyInfo PEM).

Plain files so that they work offline and in air-gapped sites; an HSM or KMS can replace the private key later
through securesystemslib's other signers without changing the envelope format.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from wanrt.errors import SignatureError

PUBLIC_SUFFIX = ".pub"
TRUST_ENV = "WANRT_TRUST"  # os.pathsep-separated public key files, like PATH


def generate_keypair(private_path: Path) -> tuple[Path, Path]:
    """Writes a new ed25519 key to ``private_path`` (0600, refused if it exists) and ``<private_path>.pub``."""
    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.name + PUBLIC_SUFFIX)
    for path in (private_path, public_path):
        if path.exists():
            raise SignatureError(f"{path} exists: refusing to overwrite a key")
    private_key = ed25519.Ed25519PrivateKey.generate()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public_path.write_bytes(private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_signer(private_path: Path) -> CryptoSigner:
    """The signer for a private key file written by :func:`generate_keypair` (or any PKCS#8 PEM key)."""
    try:
        data = Path(private_path).read_bytes()
        private_key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError) as err:
        raise SignatureError(f"cannot read the signing key {private_path}: {err}") from None
    return CryptoSigner(private_key)


def load_public_key(path: Path) -> Key:
    try:
        public_key = serialization.load_pem_public_key(Path(path).read_bytes())
        return SSlibKey.from_crypto(public_key)
    except (OSError, ValueError, TypeError) as err:
        raise SignatureError(f"cannot read the public key {path}: {err}") from None


def trusted_keys(paths: Iterable[Path] | None, environ: dict[str, str] | None = None) -> list[Key]:
    """Keys from ``--trust`` options, else from ``$WANRT_TRUST``; empty means no signature is required."""
    paths = list(paths or [])
    if not paths:
        value = (os.environ if environ is None else environ).get(TRUST_ENV, "")
        paths = [Path(p) for p in value.split(os.pathsep) if p]
    return [load_public_key(p) for p in paths]

