"""`wanrt keygen`, `wanrt sign`, `wanrt verify`, and the ``--trust`` option `generate` and `serve` share."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wanrt.engine.model_files import ManifestCheck


def add_trust_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust KEY.pub`` (repeatable; default ``$WANRT_TRUST``): only a folder signed by one of them loads."""
    parser.add_argument("--trust", type=Path, action="append", default=None, metavar="KEY.pub",
                        help="public key whose signature the model folder must carry (repeatable; default: "
                             "$WANRT_TRUST, os.pathsep-separated); unsigned or changed folders are refused")


def trusted_check(trust: list[Path] | None) -> ManifestCheck | None:
    """With trusted keys configured (``--trust`` or $WANRT_TRUST), the check the loader runs on the model
    folder's manifest bytes before it reads anything else (a folder they did not sign exits 2); None without.

    The loader then reads every file once, inside the folder, hashed against that authenticated manifest."""
    from wanrt.trust.folders import manifest_check
    from wanrt.trust.keys import trusted_keys

    keys = trusted_keys(trust)
    return manifest_check(keys) if keys else None


def check_trusted(model: Path, trust: list[Path] | None) -> None:
    """For a command that reads the folder itself (after this check): refuses a folder the trusted keys did
    not sign, hashing every file. Serving paths use ``trusted_check`` instead, which checks the bytes they load."""
    from wanrt.trust.folders import verify_folder
    from wanrt.trust.keys import trusted_keys

    keys = trusted_keys(trust)
    if keys:
        verify_folder(Path(model), keys, deep=True)


def add_provenance_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--c2pa-cert", type=Path, default=None,
                        help="C2PA signing certificate chain (PEM, leaf first; default $WANRT_C2PA_CERT, else this "
                             "installation's own certificate, made on first use: `wanrt provenance show`)")
    parser.add_argument("--c2pa-key", type=Path, default=None, help="its private key (PEM; default $WANRT_C2PA_KEY)")
    parser.add_argument("--no-provenance", action="store_true",
                        help="no C2PA manifest on the videos (recorded: stderr for generate, the audit log for "
                             "serve); by default every MP4 is marked AI-generated")


def provenance_key(args: argparse.Namespace) -> object | None:
    """The key every MP4 is signed with: the operator's (--c2pa-cert/--c2pa-key or the environment), else this
    installation's own (made on first use; an unusable state folder fails here, before the model loads), or
    None with --no-provenance. Raw .npy frames cannot carry a manifest: refused when the operator configured
    provenance, written with a notice otherwise."""
    import sys

    from wanrt.errors import InvalidRequestError
    from wanrt.trust.provenance import key_from_options

    if args.no_provenance:
        if args.c2pa_cert or args.c2pa_key:
            raise InvalidRequestError("no_provenance", "cannot be combined with --c2pa-cert/--c2pa-key")
        print("wanrt: provenance off (--no-provenance): the clip carries no C2PA manifest", file=sys.stderr)
        return None
    key = key_from_options(args.c2pa_cert, args.c2pa_key)
    raw = args.out.suffix.lower() == ".npy"
    if key is not None and raw:
        raise InvalidRequestError("out", "raw .npy frames cannot carry a C2PA manifest: with provenance configured "
                                         "write .mp4")
    if raw:
        print("wanrt: raw .npy frames carry no C2PA manifest (an .mp4 would)", file=sys.stderr)
        return None
    return key or installation_provenance_key()


def installation_provenance_key() -> object:
    """This installation's C2PA signer; StateError saying where it lives and how else to proceed."""
    from wanrt.errors import StateError
    from wanrt.trust.installation import installation_key

    try:
        return installation_key()
    except StateError as err:
        raise StateError(f"every video is signed with a C2PA manifest, and with no --c2pa-cert/--c2pa-key this "
                         f"installation's own certificate is used: {err}; or pass --c2pa-cert/--c2pa-key, or "
                         "--no-provenance to opt out") from None


def _register_provenance(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("provenance", help="this installation's C2PA certificate; check a clip's manifest")
    commands = parser.add_subparsers(dest="provenance_command", required=True, metavar="COMMAND")
    show = commands.add_parser("show", help="the per-installation signing chain (made now if absent) and the CA "
                                            "file to trust")
    show.add_argument("--pem", action="store_true", help="print the CA certificate (PEM) instead")
    show.set_defaults(handler=_provenance_show)
    verify = commands.add_parser(
        "verify", help="check a clip's C2PA manifest: trusted, valid, altered or missing",
        description="Exit 0 when the manifest is valid (and, with --trust-anchor, chains to one of them); exit 1 "
                    "when it is altered, missing, or valid but not anchored in the given trust anchors.")
    verify.add_argument("clip", type=Path)
    verify.add_argument("--trust-anchor", type=Path, action="append", default=[], metavar="CA.pem",
                        help="CA certificate(s) the signer must chain to (repeatable), e.g. this installation's "
                             "(`wanrt provenance show`)")
    verify.add_argument("--manifest", type=Path, default=None,
                        help="a sidecar manifest (<clip>.c2pa, as `wanrt client generate` writes it)")
    verify.set_defaults(handler=_provenance_verify)


def _provenance_show(args: argparse.Namespace) -> int:
    from wanrt.trust.installation import CA, describe, installation_folder

    installation_provenance_key()
    folder = installation_folder()
    if args.pem:
        print((folder / CA).read_text(), end="")
        return 0
    print(describe(folder))
    print(f"trust anchor (CA certificate): {folder / CA}")
    print("its private key was destroyed after it issued the signer: trusting this CA trusts this installation's "
          "signer only. To sign with your organisation's certificate instead: --c2pa-cert/--c2pa-key.")
    return 0


def _provenance_verify(args: argparse.Namespace) -> int:
    from wanrt.errors import InvalidRequestError
    from wanrt.trust.provenance import check_clip

    if not args.clip.is_file():
        raise InvalidRequestError("clip", f"{args.clip} is not a file")
    try:
        anchors = b"".join(path.read_bytes() for path in args.trust_anchor) or None
        manifest = args.manifest.read_bytes() if args.manifest is not None else None
    except OSError as err:
        raise InvalidRequestError("trust_anchor", f"{err.filename}: {err.strerror}") from None
    result = check_clip(args.clip, trust_anchors=anchors, manifest=manifest)
    print(f"{args.clip}: {result.state}: {result.detail}")
    if result.state in ("trusted", "valid"):
        print(f"  AI-generated (trainedAlgorithmicMedia): {'yes' if result.ai_generated else 'no'}")
        if result.generator:
            print(f"  generator: {result.generator.get('name')} {result.generator.get('version')}")
        if result.signer:
            print(f"  signed by: {result.signer}")
    ok = result.state == "trusted" or (result.state == "valid" and not args.trust_anchor)
    return 0 if ok else 1


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

    # `wanrt verify FOLDER --trust KEY.pub`. The TensorRT stage may own `wanrt verify --engines DIR` (its accuracy
    # check on the GPU): then that command gains --trust, checked before it loads anything, and the folder check
    # stays reachable as `wanrt verify-signature`.
    existing = subparsers.choices.get("verify")
    verify = subparsers.add_parser("verify-signature", aliases=[] if existing else ["verify"],
                                   help="check a folder's signature and every file's hash")
    verify.add_argument("folder", type=Path)
    add_trust_argument(verify)
    verify.set_defaults(handler=_verify)
    if existing is not None:
        _guard_with_trust(existing)

    audit = subparsers.add_parser("audit", help="check the audit log's hash chain")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    chain = audit_commands.add_parser("verify", help="follow the hash chain through audit files (oldest first); "
                                                     "exit 1 naming the first broken link")
    chain.add_argument("files", type=Path, nargs="+", help="audit.jsonl files, oldest first (rotated ones too)")
    add_trust_argument(chain)
    chain.add_argument("--expect-head", metavar="SEQ:SHA256",
                       help="a head the server logged (\"audit checkpoint\" / \"audit log closed\"): the chain "
                            "must contain it, so records removed from the end are detected")
    chain.add_argument("--heads", type=Path, metavar="SINK",
                       help="the second sink's file (--audit-head-sink; for syslog, `journalctl -t wanrt-audit -o "
                            "cat`): its latest signed head must be in the chain (needs --trust)")
    chain.add_argument("--live", action="store_true",
                       help="a running server's log: records after the last signed checkpoint are reported as "
                            "unanchored instead of refused")
    chain.set_defaults(handler=_audit_verify)
    prompt = audit_commands.add_parser("prompt-hmac", help="the HMAC a prompt is audited under, to find it in a log",
                                       description="Prints HMAC-SHA256(key, prompt): the value of params.prompt_hmac "
                                                   "(or negative_prompt_hmac) for that exact text.")
    prompt.add_argument("prompt", help="the prompt text, exactly as sent")
    prompt.add_argument("--key", type=Path, default=None,
                        help="the server's --audit-prompt-key (default: this installation's key)")
    prompt.set_defaults(handler=_audit_prompt_hmac)
    _register_qualify(subparsers)
    _register_provenance(subparsers)

    confinement = subparsers.add_parser(
        "confinement", help="show how this process is confined (SELinux context, selinuxfs, canary)",
        description="Prints, as one JSON line, what `serve --require-selinux-type` looks at: the process's SELinux "
                    "context, selinuxfs' enforce flag when visible, and the canary (a TCP connect to 127.0.0.1:50051 "
                    "that the wanrt policy denies with EACCES). With --require-selinux-type, exit 2 with the likely "
                    "cause unless the process runs as that type and the canary is denied. Run it in the container: "
                    "docker compose exec wanrt wanrt confinement")
    confinement.add_argument("--require-selinux-type", metavar="TYPE", default=None)
    confinement.set_defaults(handler=_confinement)
    _register_image_attestation(subparsers)


def _register_image_attestation(subparsers: argparse._SubParsersAction) -> None:
    attest = subparsers.add_parser(
        "attest-image", help="sign SLSA provenance for a built container image (DSSE, `wanrt keygen` keys)",
        description="Writes an in-toto Statement (SLSA Provenance v1) whose subject is the image digest, naming "
                    "the Dockerfile, target, base image, build arguments, source revision and the digests of the "
                    "files that decide the image's contents, signed with KEY. Check it with "
                    "`wanrt verify-image-attestation`.")
    attest.add_argument("--image", required=True, help="image name, e.g. registry/wanrt:gpu")
    attest.add_argument("--digest", required=True, help="sha256:... of the image (docker/podman image inspect "
                                                         "--format '{{.Id}}', or the pushed manifest digest)")
    attest.add_argument("--target", required=True, help="the Dockerfile target built (cpu, gpu)")
    attest.add_argument("--dockerfile", type=Path, default=Path("Dockerfile"))
    attest.add_argument("--base-image", required=True, help="the base image reference, pinned by digest")
    attest.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE")
    attest.add_argument("--material", type=Path, action="append", default=[],
                        help="a file that decides the image's contents (locks, pyproject.toml); repeatable")
    attest.add_argument("--revision", default="", help="source revision (git commit)")
    attest.add_argument("--builder", default="podman", help="builder id recorded in the provenance")
    attest.add_argument("--started", required=True, help="RFC 3339 build start")
    attest.add_argument("--finished", required=True, help="RFC 3339 build end")
    attest.add_argument("--key", type=Path, required=True, help="private key made by `wanrt keygen`")
    attest.add_argument("--out", type=Path, required=True, help="envelope to write (.dsse.json)")
    attest.set_defaults(handler=_attest_image)
    check = subparsers.add_parser("verify-image-attestation",
                                  help="check an image's signed provenance against a trusted key and its digest")
    check.add_argument("attestation", type=Path)
    check.add_argument("--digest", required=True, help="sha256:... of the image about to run")
    add_trust_argument(check)
    check.set_defaults(handler=_verify_image_attestation)


def _attest_image(args: argparse.Namespace) -> int:
    from wanrt.errors import InvalidRequestError
    from wanrt.trust.image_provenance import attest, provenance_statement
    from wanrt.trust.keys import load_signer

    build_args = {}
    for item in args.build_arg:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidRequestError("build_arg", f"must be NAME=VALUE, got {item!r}")
        build_args[name] = value
    statement = provenance_statement(args.image, args.digest, target=args.target, dockerfile=args.dockerfile,
                                     base_image=args.base_image, build_args=build_args, materials=args.material,
                                     revision=args.revision, builder=args.builder, started=args.started,
                                     finished=args.finished)
    print(attest(statement, load_signer(args.key), args.out))
    return 0


def _verify_image_attestation(args: argparse.Namespace) -> int:
    from wanrt.errors import SignatureError
    from wanrt.trust.image_provenance import summary, verify_attestation
    from wanrt.trust.keys import trusted_keys

    keys = trusted_keys(args.trust)
    if not keys:
        raise SignatureError("no trusted key: pass --trust KEY.pub or set WANRT_TRUST")
    print(summary(verify_attestation(args.attestation, args.digest, keys)))
    return 0


def _guard_with_trust(parser: argparse.ArgumentParser) -> None:
    """Adds --trust to another stage's command that takes ``--engines`` or ``--model``: the folder's signature is
    checked before that command's own handler runs."""
    add_trust_argument(parser)
    handler = parser.get_default("handler")

    def guarded(args: argparse.Namespace) -> int:
        folder = getattr(args, "engines", None) or getattr(args, "model", None)
        if folder is not None:
            check_trusted(folder, args.trust)
        return handler(args)

    parser.set_defaults(handler=guarded)


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
    from wanrt.server.audit_chain import ChainHead, read_heads, verify_chain
    from wanrt.trust.keys import trusted_keys

    expect = None
    if args.expect_head:
        seq, _, digest = args.expect_head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise InvalidRequestError("expect_head", f"must be SEQ:SHA256, got {args.expect_head!r}")
        expect = ChainHead(int(seq), digest)
    keys = trusted_keys(args.trust)
    if args.heads is not None and not keys:
        raise InvalidRequestError("heads", "are signed: give --trust KEY.pub to check them")
    heads = read_heads(args.heads, keys) if args.heads is not None else []
    report = verify_chain(args.files, keys, expect_head=expect, heads=heads, live=args.live)
    print(f"audit chain intact: {report.records} records, seq {report.first_seq}..{report.head.seq}, head "
          f"sha256 {report.head.sha256}, {report.checkpoints} signed checkpoints verified")
    if not report.signed:
        print("signatures not checked (no --trust): anyone able to write the file could have rewritten it whole")
    else:
        print(f"anchored by signed checkpoints up to seq {report.anchored_to}")
    for first, last in report.unanchored:
        print(f"UNANCHORED: seq {first}..{last} (no signed checkpoint vouches for them: a crash, or a running "
              "server's newest records)")
    return 0


def _audit_prompt_hmac(args: argparse.Namespace) -> int:
    from wanrt.server.convert import prompt_hmac
    from wanrt.state import key_id, read_secret, secret

    key = read_secret(args.key) if args.key is not None else secret("audit-prompts.key")
    print(prompt_hmac(args.prompt, key))
    print(f"key id {key_id(key)} (the audit log's genesis/start records name the key they use)", file=sys.stderr)
    return 0


def _confinement(args: argparse.Namespace) -> int:
    import json

    from wanrt.trust.confinement import inspect, require_selinux_type

    found = require_selinux_type(args.require_selinux_type) if args.require_selinux_type else inspect()
    print(json.dumps({"context": found.context, "type": found.type, "enforce": found.enforce,
                      "canary_errno": found.canary_errno, "canary_denied": found.canary_denied,
                      "summary": found.describe()}))
    return 0


def _register_qualify(subparsers: argparse._SubParsersAction) -> None:
    from wanrt.engine.loader import BACKENDS

    parser = subparsers.add_parser(
        "qualify", help="installation/operational/performance qualification, as a signed report",
        description="IQ: component versions, the model checked against its signature, SELinux type, GPU and "
                    "driver. OQ: reference prompts and seeds against the outputs recorded for this installation, "
                    "the bad-request table, the audit chain. PQ: latency of N runs inside --max-latency-s. Writes "
                    "qualification.json and qualification.md into --out, signed with --key; exit 1 on any failed "
                    "check.")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", type=Path, help="artifact folder (onnxruntime, or --backend)")
    model.add_argument("--engines", type=Path, help="TensorRT engines folder (backend tensorrt, device cuda)")
    parser.add_argument("--backend", choices=BACKENDS, default=None)
    parser.add_argument("--device", default=None, help="default cpu (cuda with --engines)")
    add_trust_argument(parser)
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, help="report folder to write")
    out.add_argument("--record-reference", type=Path, metavar="DIR",
                     help="at installation: record the reference outputs into DIR instead of qualifying")
    parser.add_argument("--key", type=Path, help="signing key for the report (required with --out)")
    parser.add_argument("--reference", type=Path, help="reference folder recorded by --record-reference")
    parser.add_argument("--audit-log", type=Path, action="append", default=[],
                        help="audit files to verify, oldest first (repeatable)")
    parser.add_argument("--runs", type=int, default=3, help="PQ: timed runs (default %(default)s)")
    parser.add_argument("--max-latency-s", type=float, default=None,
                        help="PQ: declared envelope, seconds per run of the reference request (required with --out)")
    parser.add_argument("--require-selinux-type", metavar="TYPE", default=None,
                        help="IQ: the SELinux type this process must run as (default: recorded only)")
    parser.set_defaults(handler=_qualify)


def _qualify(args: argparse.Namespace) -> int:
    from wanrt.engine.loader import load_pipeline
    from wanrt.errors import InvalidRequestError, SignatureError
    from wanrt.trust import qualify
    from wanrt.trust.folders import manifest_check, verify_folder
    from wanrt.trust.keys import load_signer, trusted_keys

    model = args.model or args.engines
    backend = args.backend or ("tensorrt" if args.engines else "onnxruntime")
    device = args.device or ("cuda" if backend == "tensorrt" else "cpu")
    keys = trusted_keys(args.trust)
    if not keys:
        raise SignatureError("qualify checks the model's signature: pass --trust KEY.pub or set WANRT_TRUST")

    def loader(path: Path, backend_: str, device_: str) -> object:
        return load_pipeline(path, backend_, device=device_, check=manifest_check(keys))

    if args.record_reference is not None:
        verify_folder(model, keys, deep=True)
        print(qualify.record_reference(loader(model, backend, device), args.record_reference, backend, device))
        return 0
    if args.key is None:
        raise InvalidRequestError("key", "is required with --out: the report is signed")
    if args.max_latency_s is None or not args.max_latency_s > 0:
        raise InvalidRequestError("max_latency_s", "is required with --out: PQ needs a declared envelope (> 0)")
    if args.runs < 1:
        raise InvalidRequestError("runs", f"must be at least 1, got {args.runs}")
    signer = load_signer(args.key)  # before the runs: a bad key fails at once
    options = qualify.QualifyOptions(model, backend, device, keys, args.reference, args.audit_log, args.runs,
                                     args.max_latency_s, args.require_selinux_type)
    checks = qualify.qualify(options, loader)
    qualify.write_report(args.out, checks, options, signer)
    for check in checks:
        print(f"{check.stage} {check.status.upper():4} {check.name}: {check.detail}")
    failed = [c for c in checks if c.status == "fail"]
    print(f"{args.out}: {'FAILED' if failed else 'PASSED'} ({len(checks)} checks, {len(failed)} failed), signed")
    return 1 if failed else 0
