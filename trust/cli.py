"""`wanrt keygen`, `wanrt sign`, `wanrt verify`, and the ``--trust`` option `generate` and `serve` share."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_trust_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust KEY.pub`` (repeatable; default ``$WANRT_TRUST``): only a folder signed by one of them loads."""
    parser.add_argument("--trust", type=Path, action="append", default=None, metavar="KEY.pub",
                        help="public key whose signature the model folder must carry (repeatable; default: "
                             "$WANRT_TRUST, os.pathsep-separated); unsigned or changed folders are refused")


def check_trusted(model: Path, trust: list[Path] | None) -> None:
    """Before anything loads: with trusted keys configured, refuses a model folder they did not sign (exit 2).

    The loader then hashes every file against the (now authenticated) manifest before any network loads."""
    from wanrt.trust.folders import verify_folder
    from wanrt.trust.keys import trusted_keys

    keys = trusted_keys(trust)
    if keys:
        verify_folder(Path(model), keys, deep=False)


def add_provenance_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--c2pa-cert", type=Path, default=None,
                        help="C2PA signing certificate chain (PEM, leaf first; default $WANRT_C2PA_CERT): every "
                             "video gets a signed manifest marking it AI-generated")
    parser.add_argument("--c2pa-key", type=Path, default=None, help="its private key (PEM; default $WANRT_C2PA_KEY)")


def provenance_key(args: argparse.Namespace) -> object | None:
    """The configured C2PA key (checked now: a bad one fails before the model loads), or None."""
    from wanrt.errors import InvalidRequestError
    from wanrt.trust.provenance import key_from_options

    key = key_from_options(args.c2pa_cert, args.c2pa_key)
    if key is not None and args.out.suffix.lower() == ".npy":
        raise InvalidRequestError("out", "raw .npy frames cannot carry a C2PA manifest: with provenance configured "
                                         "write .mp4")
    return key


def register(subparsers: argparse._SubParsersAction) -> None:
    keygen = subparsers.add_parser("keygen", help="make an ed25519 signing key (KEY, 0600) and KEY.pub")
    keygen.add_argument("key", type=Path, help="private key file to create")
    keygen.set_defaults(handler=_keygen)

    sign = subparsers.add_parser("sign", help="sign an artifact or engines folder (writes signature.dsse.json)",
                                 description="Checks every file against the folder's manifest, then writes a DSSE "
                                             "envelope holding an in-toto statement over the manifest and the "
                                             "files it lists (engines: bound to their source artifact).")
    sign.add_argument("folder", type=Path, help="artifact (manifest.json) or engines (engines.json) folder")
    sign.add_argument("--key", type=Path, required=True, help="private key made by `wanrt keygen`")
    sign.set_defaults(handler=_sign)

    verify = subparsers.add_parser("verify", help="check a folder's signature and every file's hash")
    verify.add_argument("folder", type=Path)
    add_trust_argument(verify)
    verify.set_defaults(handler=_verify)

    audit = subparsers.add_parser("audit", help="check the audit log's hash chain")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    chain = audit_commands.add_parser("verify", help="follow the hash chain through audit files (oldest first); "
                                                     "exit 1 naming the first broken link")
    chain.add_argument("files", type=Path, nargs="+", help="audit.jsonl files, oldest first (rotated ones too)")
    add_trust_argument(chain)
    chain.add_argument("--expect-head", metavar="SEQ:SHA256",
                       help="a head the server logged (\"audit checkpoint\" / \"audit log closed\"): the chain "
                            "must contain it, so records removed from the end are detected")
    chain.set_defaults(handler=_audit_verify)


def _keygen(args: argparse.Namespace) -> int:
    from wanrt.trust.keys import generate_keypair

    private, public = generate_keypair(args.key)
    print(f"{private}\n{public}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from wanrt import __version__
    from wanrt.trust.folders import sign_folder
    from wanrt.trust.keys import load_signer

    print(sign_folder(args.folder, load_signer(args.key), wanrt_version=__version__))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from wanrt.errors import SignatureError
    from wanrt.trust.folders import verify_folder
    from wanrt.trust.keys import trusted_keys

    keys = trusted_keys(args.trust)
    if not keys:
        raise SignatureError("no trusted key: pass --trust KEY.pub or set WANRT_TRUST")
    statement = verify_folder(args.folder, keys, deep=True)
    predicate = statement["predicate"]
    print(f"{args.folder}: signed {predicate['kind']} folder, {len(statement['subject'])} files verified "
          f"(signed {predicate.get('signed_utc')})")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from wanrt.errors import InvalidRequestError
    from wanrt.server.audit_chain import ChainHead, verify_chain
    from wanrt.trust.keys import trusted_keys

    expect = None
    if args.expect_head:
        seq, _, digest = args.expect_head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise InvalidRequestError("expect_head", f"must be SEQ:SHA256, got {args.expect_head!r}")
        expect = ChainHead(int(seq), digest)
    keys = trusted_keys(args.trust)
    report = verify_chain(args.files, keys, expect_head=expect)
    print(f"audit chain intact: {report.records} records, seq {report.first_seq}..{report.head.seq}, head "
          f"sha256 {report.head.sha256}, {report.checkpoints} signed checkpoints verified")
    return 0
