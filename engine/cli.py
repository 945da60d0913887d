"""`wanrt generate`: one clip from a prompt, in-process."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

from wanrt.engine.defaults import ModelDefaults
from wanrt.engine.loader import BACKENDS
from wanrt.engine.request import RANDOM_SEED, GenerationRequest
from wanrt.engine.schedules import schedule_names
from wanrt.trust.cli import add_provenance_arguments, add_trust_argument

# Request options whose default is the model's (its manifest's defaults, engine/defaults.py): left unset here.
MODEL_DEFAULTED = ("frames", "height", "width", "steps", "guidance", "guidance_2", "fps", "schedule", "shift")


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """The request's options, shared by `wanrt generate` and `wanrt client generate`."""
    defaults = GenerationRequest.defaults()
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default=defaults.negative_prompt)
    parser.add_argument("--frames", type=int, default=None, help="4k+1 frames (default: the model's)")
    parser.add_argument("--height", type=int, default=None, help="multiple of 16 (default: the model's)")
    parser.add_argument("--width", type=int, default=None, help="multiple of 16 (default: the model's)")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's schedule's")
    parser.add_argument("--guidance", type=float, default=None,
                        help="high-noise expert's CFG scale (default: the model's schedule's)")
    parser.add_argument("--guidance-2", type=float, default=None,
                        help="low-noise expert's CFG scale (default: same as --guidance if given, else the model's)")
    parser.add_argument("--schedule", choices=schedule_names(), default=None,
                        help="denoising schedule: base (the model's scheduler) or a distilled preset, with its "
                             "steps, guidance and shift unless given (default: the model's)")
    parser.add_argument("--shift", type=float, default=None, help="flow shift (default: the schedule's)")
    parser.add_argument("--step-cache", type=float, default=None, metavar="THRESHOLD",
                        help="adaptive step cache: reuse an expert's last call while the estimated change stays "
                             "under THRESHOLD (0-1; default off, or the server's setting)")
    parser.add_argument("--seed", type=int, default=None,
                        help="noise seed (default or -1: drawn at random and printed, so a clip can be made again)")
    parser.add_argument("--latents", type=Path, default=None,
                        help="initial noise .npy of shape (1, 16, (F-1)/4+1, H/8, W/8); overrides --seed")
    parser.add_argument("--fps", type=int, default=None, help="default: the model's")
    parser.add_argument("--out", type=Path, required=True, help="output .mp4 (H.264) or .npy (uint8 frames)")


def unset_video_fields(args: argparse.Namespace) -> list[str]:
    """The model-defaulted request fields the command line left unset (a client leaves them to the server)."""
    unset = [name for name in (*MODEL_DEFAULTED, "step_cache") if getattr(args, name) is None]
    if "guidance_2" in unset and "guidance" not in unset:
        unset.remove("guidance_2")  # --guidance alone: the low-noise expert follows it
    return unset


def request_from_args(args: argparse.Namespace, defaults: ModelDefaults | None = None) -> GenerationRequest:
    """The request the options ask for; unset ones take ``defaults`` (the model's), else wanrt's preview."""
    from wanrt.errors import InvalidRequestError

    latents = None
    if args.latents is not None:
        try:
            latents = np.load(args.latents, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InvalidRequestError("latents", f"cannot read {args.latents}: {err}") from None
    if args.out.suffix.lower() not in (".mp4", ".npy"):
        raise InvalidRequestError("out", f"must end in .mp4 or .npy, got {args.out.name!r}")
    # Before the model loads and the clip is generated, not after (other write errors: wanrt/cli.py).
    if not args.out.parent.is_dir():
        raise InvalidRequestError("out", f"{args.out.parent} is not a directory")
    if args.out.is_dir():
        raise InvalidRequestError("out", f"{args.out} is a directory")
    base = GenerationRequest.defaults() if defaults is None else defaults.request(schedule=args.schedule)
    given = {name: getattr(args, name) for name in (*MODEL_DEFAULTED, "step_cache")
             if getattr(args, name) is not None}
    if args.guidance is not None and args.guidance_2 is None:
        given["guidance_2"] = None
    return dataclasses.replace(base, prompt=args.prompt, negative_prompt=args.negative_prompt,
                               seed=RANDOM_SEED if args.seed is None else args.seed,
                               latents=latents, **given)


def describe_defaults(defaults: ModelDefaults) -> str:
    """One paragraph of a model's request defaults, as `--help` shows them."""
    sizes = f" (sizes it was made for: {', '.join(defaults.sizes)})" if len(defaults.sizes) > 1 else ""
    others = sorted(set(defaults.schedules) - {defaults.schedule})
    return (f"{defaults.frames} frames at {defaults.width}x{defaults.height}{sizes}, {defaults.fps} fps; schedule "
            f"{defaults.schedule} ({defaults.scheduler}): {defaults.steps} steps, guidance {defaults.guidance:g} / "
            f"{defaults.guidance_2:g}, shift {defaults.shift:g}"
            + (f"; other schedules: {', '.join(others)}" if others else "")
            + (f" [recipe {defaults.recipe}]" if defaults.recipe else "")
            + "; seed: random unless --seed, always printed")


class _HelpWithModelDefaults(argparse.Action):
    """``-h``: the options, then the defaults of the model ``--model`` (given before ``-h``) names, read from its
    manifest or config without loading it, so `wanrt generate --model M -h` shows what M generates unasked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show this help, with the defaults of --model (give it first), and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from wanrt.engine.loader import model_defaults
        from wanrt.errors import WanrtError

        try:
            model = _model_or_default(namespace)
            parser.epilog = f"Defaults of {model} ({namespace.backend}): " + \
                describe_defaults(model_defaults(model, namespace.backend))
        except (WanrtError, OSError) as err:
            parser.epilog = f"The model's defaults are not shown: {err}"
        parser.print_help()
        parser.exit()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="generate a clip in this process", add_help=False)
    parser.add_argument("-h", "--help", action=_HelpWithModelDefaults)
    parser.add_argument("--model", type=Path, default=os.environ.get("WANRT_MODEL") or None,
                        help="artifact folder (onnxruntime), engines folder (tensorrt) or diffusers Wan folder "
                             "(torch); default $WANRT_MODEL, else the embedded reef demo model (onnxruntime)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    parser.add_argument("--device", dest="devices", action="append", default=None,
                        help="cpu, cuda, cuda:N or auto (default cpu); twice with --cfg-parallel. A GPU that cannot "
                             "be used is an error (exit 2); only auto falls back to the CPU, saying so")
    parser.add_argument("--cfg-parallel", action="store_true",
                        help="run the cond and uncond halves of each guided step on the two --device at once")
    add_trust_argument(parser)
    add_provenance_arguments(parser)
    add_memory_budget_argument(parser)
    add_placement_arguments(parser)
    add_video_arguments(parser)
    parser.set_defaults(handler=_generate)


def add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    """``--residency`` and ``--text-encoder`` (GPU backends), shared by `wanrt generate` and `wanrt serve`."""
    from wanrt.engine.tensorrt.cli import add_text_encoder_argument

    parser.add_argument("--residency", choices=("resident", "per-stage"), default=None,
                        help="tensorrt/torch: resident keeps both experts on the GPU; per-stage one at a time "
                             "(the other waits in host memory). Default: the engines' build choice (tensorrt), "
                             "resident (torch)")
    add_text_encoder_argument(parser, "(tensorrt: the engines' build choice; torch: resident)")


def add_memory_budget_argument(parser: argparse.ArgumentParser) -> None:
    """``--memory-budget``, shared by `wanrt generate` and `wanrt serve`."""
    parser.add_argument("--memory-budget", default=None,
                        help="memory a request may bring the process to, e.g. 6G (default: the cgroup limit, "
                             "else physical memory, less a reserve); larger requests are refused before they run")


def _generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wanrt.engine.admission import admission_for
    from wanrt.engine.budget import parse_size
    from wanrt.engine.loader import load_pipelines, memory_plans, usable_device
    from wanrt.engine.pipeline import Progress
    from wanrt.engine.request import clip_settings
    from wanrt.engine.video import write_video
    from wanrt.errors import InvalidRequestError
    from wanrt.trust.cli import provenance_key, trusted_check

    request_from_args(args)  # a bad option or output path fails before the model loads
    # Resolved before the model loads: an unusable `cuda` is one line and exit 2, `auto` says where it runs.
    devices = tuple(usable_device(d, args.backend) for d in args.devices or ("cpu",))
    if len(devices) != (2 if args.cfg_parallel else 1):
        raise InvalidRequestError("device", "takes one device, or exactly two with --cfg-parallel; got "
                                            f"{len(devices)}")
    budget = None if args.memory_budget is None else parse_size("memory_budget", args.memory_budget)
    model = _model_or_default(args)
    provenance = provenance_key(args)
    (pipeline,) = load_pipelines(model, args.backend, devices, cfg_parallel=args.cfg_parallel,
                                 check=trusted_check(args.trust), residency=args.residency,
                                 text_encoder=args.text_encoder)
    for plan in memory_plans([pipeline]):
        print(plan, file=sys.stderr)
    request = request_from_args(args, pipeline.defaults).with_seed_chosen()
    request.validate(pipeline.limits)
    for warning in pipeline.warnings(request):
        print(f"wanrt: warning: {warning}", file=sys.stderr)
    admission = admission_for(pipeline, budget, devices)
    if admission is not None:
        admission.check(request)  # before anything runs: refused with what would fit
    bars: dict[str, tqdm] = {}

    def show(progress: Progress) -> None:
        bar = bars.get(progress.stage)
        if bar is None:
            # Off when stderr is no terminal: a log gets no escape codes.
            bar = bars[progress.stage] = tqdm(total=progress.total, desc=progress.stage, unit="step", leave=True,
                                              disable=not sys.stderr.isatty())
        bar.update(progress.step - bar.n)

    try:
        frames = pipeline.generate(request, on_progress=show)
        settings = clip_settings(request, pipeline.identity, pipeline.warnings(request))  # in its metadata
        if provenance is None:
            write_video(args.out, frames, request.fps, metadata=settings)
        else:
            _write_signed(args.out, frames, request.fps, provenance, pipeline.identity, settings)
    finally:
        for bar in bars.values():
            bar.close()
    print(f"seed {request.seed}" if request.latents is None else f"noise from {args.latents}", file=sys.stderr)
    print(args.out)
    return 0


def _write_signed(out: Path, frames: object, fps: int, key: object, identity: dict, settings: dict) -> None:
    import uuid

    from wanrt import __version__
    from wanrt.trust.provenance import manifest_definition, write_signed_video

    definition = manifest_definition(identity, uuid.uuid4().hex, wanrt_version=__version__, title=out.name)
    write_signed_video(out, frames, fps, key, definition, metadata=settings)


def _model_or_default(args: argparse.Namespace) -> Path:
    from wanrt.errors import InvalidRequestError

    if args.model is not None:
        return args.model
    if args.backend != "onnxruntime":
        raise InvalidRequestError("model", f"is required with --backend {args.backend}")
    try:
        from wanrt.reef import default_model_dir
    except ImportError:
        raise InvalidRequestError("model", "is required: this install has no embedded demo model") from None
    return default_model_dir()
