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
