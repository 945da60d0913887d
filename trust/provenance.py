"""C2PA provenance on every video: a signed manifest that says the clip is AI-generated (digital source type
``trainedAlgorithmicMedia``, as the EU AI Act's Article 50 marking asks), names the generator (wanrt version,
model identity with artifact and engine hashes) and the request id. Built and checked by c2pa-python.

Two forms, one manifest: embedded into the MP4 (`wanrt generate`: the file on disk is the signed file), or a
sidecar manifest store bound to the exact bytes already streamed (`wanrt serve`: chunks leave as they are
decoded, so the server cannot embed into bytes the client already has; the Result carries the sidecar, which
`wanrt client generate` writes next to the clip as ``<clip>.c2pa``). Raw ``.npy`` frames cannot carry C2PA and
are refused when provenance is configured: unmarked AI output does not leave a regulated deployment.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.errors import InvalidRequestError, ProvenanceError

MIME = "video/mp4"
ASSERTION = "org.wanrt.generation"  # wanrt's own assertion: generator identity and request
SIDECAR_SUFFIX = ".c2pa"
CERT_ENV, KEY_ENV = "WANRT_C2PA_CERT", "WANRT_C2PA_KEY"


@dataclasses.dataclass(frozen=True)
class ProvenanceKey:
    """A C2PA signing certificate chain (PEM, leaf first) and its private key (PEM), checked to belong together."""

    cert_chain: bytes
    private_key: bytes
    algorithm: str  # c2pa.C2paSigningAlg member name
    origin: str = "operator"  # "operator" (--c2pa-cert) or "installation" (made by wanrt: trust/installation.py)

    def with_origin(self, origin: str) -> ProvenanceKey:
        return dataclasses.replace(self, origin=origin)

    @classmethod
    def load(cls, cert: Path, key: Path) -> ProvenanceKey:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            chain, key_pem = Path(cert).read_bytes(), Path(key).read_bytes()
            leaf = x509.load_pem_x509_certificates(chain)[0]
            private = serialization.load_pem_private_key(key_pem, password=None)
        except (OSError, ValueError, TypeError, IndexError) as err:
            raise ProvenanceError(f"cannot read the C2PA certificate {cert} or key {key}: {err}") from None
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf.public_key().public_bytes(serialization.Encoding.DER, public) != \
                private.public_key().public_bytes(serialization.Encoding.DER, public):
            raise ProvenanceError(f"the C2PA key {key} does not belong to the certificate {cert}")
        return cls(chain, key_pem, _algorithm(private))

    def signer(self) -> Any:
        import c2pa

        info = c2pa.C2paSignerInfo(getattr(c2pa.C2paSigningAlg, self.algorithm), self.cert_chain, self.private_key,
                                   None)
        try:
            return c2pa.Signer.from_info(info)
        except c2pa.C2paError as err:
            raise ProvenanceError(f"c2pa refuses the signing certificate: {err}") from None


def key_from_options(cert: Path | None, key: Path | None) -> ProvenanceKey | None:
    """``--c2pa-cert``/``--c2pa-key``, else ``$WANRT_C2PA_CERT``/``$WANRT_C2PA_KEY``; None when neither is set."""
    cert = cert or (Path(os.environ[CERT_ENV]) if os.environ.get(CERT_ENV) else None)
    key = key or (Path(os.environ[KEY_ENV]) if os.environ.get(KEY_ENV) else None)
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise InvalidRequestError("c2pa_cert", "--c2pa-cert and --c2pa-key go together")
    try:
        return ProvenanceKey.load(cert, key)
    except ProvenanceError as err:
        raise InvalidRequestError("c2pa_cert", str(err)) from None


def manifest_definition(identity: Mapping[str, Any], request_id: str, *, wanrt_version: str,
                        title: str = "wanrt.mp4") -> dict[str, Any]:
    """The manifest: claim generator, wanrt's generation assertion (the created action with the digital source
    type is added by the builder's CREATE intent)."""
    return {
        "claim_generator_info": [{"name": "wanrt", "version": wanrt_version}],
        "title": title,
        "format": MIME,
        "assertions": [{"label": ASSERTION, "data": {
            "generator": {"name": "wanrt", "version": wanrt_version},
            "model": {str(k): str(v) for k, v in identity.items()},
            "request_id": request_id,
        }}],
    }


def _builder(definition: Mapping[str, Any]) -> Any:
    import c2pa

    builder = c2pa.Builder(dict(definition))
    builder.set_intent(c2pa.C2paBuilderIntent.CREATE, c2pa.C2paDigitalSourceType.TRAINED_ALGORITHMIC_MEDIA)
    return builder


def embed(path: Path, key: ProvenanceKey, definition: Mapping[str, Any]) -> Path:
    """Rewrites the MP4 at ``path`` with the signed manifest embedded (atomically: a hidden partial, renamed)."""
    import c2pa

    path = Path(path)
    partial = path.with_name(f".{path.name}.c2pa-partial")
    try:
        with open(path, "rb") as source, open(partial, "w+b") as dest:
            _builder(definition).sign(key.signer(), MIME, source, dest)
        partial.replace(path)
    except c2pa.C2paError as err:
        raise ProvenanceError(f"C2PA signing of {path} failed: {err}") from None
    finally:
        partial.unlink(missing_ok=True)
    return path


def embed_bytes(video: bytes, key: ProvenanceKey, definition: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """A complete MP4's bytes with the signed manifest embedded, and that manifest store (the HTTP API's
    downloads: the client gets one file carrying its own provenance)."""
    import c2pa

    signed = io.BytesIO()
    try:
        manifest = _builder(definition).sign(key.signer(), MIME, io.BytesIO(video), signed)
    except c2pa.C2paError as err:
        raise ProvenanceError(f"C2PA signing failed: {err}") from None
    return signed.getvalue(), manifest


def write_signed_video(path: Path, chunks: Iterable[np.ndarray], fps: int, key: ProvenanceKey,
                       definition: Mapping[str, Any]) -> Path:
    """write_video, then embed: the path only ever holds the signed file."""
    from wanrt.engine.video import write_video

    path = Path(path)
    unsigned = path.with_name(f".{path.name}.unsigned.mp4")
    try:
        embed(write_video(unsigned, chunks, fps), key, definition).replace(path)
    finally:
        unsigned.unlink(missing_ok=True)
    return path


def sidecar(video: bytes, key: ProvenanceKey, definition: Mapping[str, Any]) -> bytes:
    """A detached manifest store for ``video`` as it is (bytes already streamed stay valid)."""
    import c2pa

    builder = _builder(definition)
    builder.set_no_embed()
    try:
        return builder.sign(key.signer(), MIME, io.BytesIO(video), io.BytesIO())
    except c2pa.C2paError as err:
        raise ProvenanceError(f"C2PA signing failed: {err}") from None


def read(video: Path, *, manifest: bytes | None = None, trust_anchors: bytes | None = None) -> dict[str, Any]:
    """The manifest store as c2pa's Reader reports it (``validation_state``: Invalid, Valid, or Trusted when
    ``trust_anchors`` (PEM) include the signer's CA)."""
    import c2pa

    context = None
    if trust_anchors is not None:
        context = c2pa.Context(c2pa.Settings.from_dict({"trust": {"user_anchors": trust_anchors.decode()}}))
    try:
        with open(video, "rb") as stream:
            reader = c2pa.Reader(MIME, stream, manifest_data=manifest, context=context)
            store = json.loads(reader.json())
            store["validation_state"] = reader.get_validation_state()
    except c2pa.C2paError as err:
        raise ProvenanceError(f"{video}: no readable C2PA manifest ({err})") from None
    return store


TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


@dataclasses.dataclass(frozen=True)
class ClipCheck:
    """What `wanrt provenance verify` found: ``state`` is ``trusted`` (valid, and the signer chains to a given
    trust anchor), ``valid`` (signature and hashes good, signer not anchored), ``altered`` (a manifest whose
    signature or hashes fail: the clip or its manifest changed) or ``missing`` (no manifest at all)."""

    state: str
    detail: str
    ai_generated: bool = False  # a c2pa.created action with digital source type trainedAlgorithmicMedia
    generator: dict[str, Any] = dataclasses.field(default_factory=dict)
    signer: str = ""
    failures: list[str] = dataclasses.field(default_factory=list)


def check_clip(video: Path, *, trust_anchors: bytes | None = None, manifest: bytes | None = None) -> ClipCheck:
    """Checks a clip's C2PA manifest (embedded, or the sidecar ``manifest``) with c2pa's Reader."""
    import c2pa

    try:
        store = read(video, manifest=manifest, trust_anchors=trust_anchors)
    except ProvenanceError as err:
        cause = err.__context__ if isinstance(err.__context__, c2pa.C2paError) else None
        if isinstance(cause, c2pa.C2paError.ManifestNotFound) or "ManifestNotFound" in str(err):
            return ClipCheck("missing", f"{video} carries no C2PA manifest" +
                             ("" if manifest is None else " matching the given sidecar"))
        return ClipCheck("altered", str(err))
    active = store.get("manifests", {}).get(store.get("active_manifest"), {})
    assertions = {a.get("label"): a.get("data") for a in active.get("assertions", [])}
    actions = (assertions.get("c2pa.actions.v2") or assertions.get("c2pa.actions") or {}).get("actions", [])
    ai = any(a.get("action") == "c2pa.created" and a.get("digitalSourceType") == TRAINED for a in actions)
    failures = [f.get("code", "") for f in
                (store.get("validation_results") or {}).get("activeManifest", {}).get("failure", [])]
    signer = (active.get("signature_info") or {}).get("common_name") or \
        (active.get("signature_info") or {}).get("issuer", "")
    generation = assertions.get(ASSERTION) or {}
    # c2pa's own verdict: Invalid when a signature or a hash fails; an unanchored signer
    # (signingCredential.untrusted) leaves the manifest Valid.
    state = {"Trusted": "trusted", "Valid": "valid"}.get(store.get("validation_state"), "altered")
    detail = {"trusted": "signature and hashes valid; the signer chains to a given trust anchor",
              "valid": "signature and hashes valid; the signer is not anchored" +
                       (" in the given trust anchors" if trust_anchors else " (no --trust-anchor given)"),
              "altered": "the manifest does not match the clip: " + (", ".join(failures) or "invalid")}[state]
    return ClipCheck(state, detail, ai, dict(generation.get("generator") or {}), str(signer), failures)


def _algorithm(private_key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return "ED25519"
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        algorithms = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if private_key.curve.name in algorithms:
            return algorithms[private_key.curve.name]
    if isinstance(private_key, rsa.RSAPrivateKey):
        return "PS256"
    raise ProvenanceError(f"C2PA cannot sign with a {type(private_key).__name__}: use EC P-256/384/521, Ed25519 "
                          "or RSA (PSS)")
