"""Trust tests: a signing key pair, and signed copies of the tiny artifact and of a stand-in engines folder."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "trt"))  # trt_testkit: engines.json as build_engines writes it


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from wanrt.trust.keys import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys") / "signing.key")


@pytest.fixture(scope="session")
def other_key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from wanrt.trust.keys import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys2") / "other.key")


@pytest.fixture
def signed_artifact(tiny_artifact_dir: Path, tmp_path: Path, key_pair: tuple[Path, Path]) -> Path:
    from wanrt.trust.folders import sign_folder
    from wanrt.trust.keys import load_signer

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact_dir, art)
    sign_folder(art, load_signer(key_pair[0]), wanrt_version="test")
    return art


@pytest.fixture
def signed_engines(signed_artifact: Path, tmp_path: Path, key_pair: tuple[Path, Path]) -> Path:
    from trt_testkit import MAX_FRAMES, MAX_HEIGHT, MAX_WIDTH, write_standin_engines

    from wanrt.engine.artifact import load_artifact
    from wanrt.engine.tensorrt.profiles import serving_limits
    from wanrt.trust.folders import sign_folder
    from wanrt.trust.keys import load_signer

    artifact = load_artifact(signed_artifact)
    limits = serving_limits(artifact.spec, max_frames=MAX_FRAMES, max_height=MAX_HEIGHT, max_width=MAX_WIDTH)
    engines = tmp_path / "engines"
    write_standin_engines(engines, signed_artifact, artifact, limits)
    sign_folder(engines, load_signer(key_pair[0]), wanrt_version="test")
    return engines


@pytest.fixture(scope="session")
def c2pa_material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA and a C2PA signing certificate it issued (EC P-256, emailProtection EKU as C2PA requires)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = tmp_path_factory.mktemp("c2pa")
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wanrt tests")])

    def usage(signing: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=signing, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=not signing,
                             crl_sign=not signing, encipher_only=False, decipher_only=False)

    def cert(subject: str, key, issuer, issuer_key, *, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(usage(not ca), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if not ca:  # c2pa checks the chain: the leaf names its issuer's key
            builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                                             critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                      critical=False))
        return builder.sign(issuer_key, hashes.SHA256())

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key, key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = cert("wanrt test CA", ca_key, name("wanrt test CA"), ca_key, ca=True)
    leaf = cert("wanrt video signer", key, ca.subject, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    files = {"ca": ca.public_bytes(pem), "cert": leaf.public_bytes(pem) + ca.public_bytes(pem),
             "key": pem_key(key), "other_key": pem_key(other_key)}
    for label, data in files.items():
        (out / f"{label}.pem").write_bytes(data)
    return {label: out / f"{label}.pem" for label in files}
