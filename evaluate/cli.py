"""`wanrt eval`: prompt adherence of a model on held-out reef prompts, as a table and as JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from wanrt.engine.loader import BACKENDS

    parser = subparsers.add_parser("eval", help="measure prompt adherence on held-out reef prompts")
    parser.add_argument("--model", type=Path, default=None,
                        help="artifact folder (onnxruntime) or diffusers folder (torch); default: the built-in reef "
                             "model")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--prompts", type=int, default=25, help="number of held-out prompts (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="which held-out prompts (and the clips' seeds)")
    parser.add_argument("--frames", type=int, default=None, help="default: the model's")
    parser.add_argument("--height", type=int, default=None, help="default: the model's")
    parser.add_argument("--width", type=int, default=None, help="default: the model's")
    parser.add_argument("--steps", type=int, default=None, help="default: the engine's default")
    parser.add_argument("--guidance", type=float, default=None, help="default: the engine's default")
    parser.add_argument("--json", type=Path, default=None, help="write every prompt's readings and the summary")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip scoring the renderer's own clips (the probes' ceiling)")
    gate = parser.add_argument_group("quality gate: shortcuts against the full schedule (evaluate/gate.py)")
    gate.add_argument("--against", metavar="SETTING", default=None,
                      help="measure each --setting against this one for the same prompts and seeds: 'full' (the "
                           "model's default schedule) or key=value,... as --setting")
    gate.add_argument("--setting", action="append", default=[], metavar="SETTING",
                      help="a shortcut to gate, repeatable: cache=0.2 | schedule=lightning-4step | steps=20 | "
                           "model=ARTIFACT (e.g. LoRA-merged) | guidance=1,shift=5 | label=NAME ...")
    gate.add_argument("--markdown", type=Path, default=None, help="also write the gate's table here")
    parser.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np

    from wanrt.engine.loader import load_pipeline
    from wanrt.errors import InvalidRequestError
    from wanrt.evaluate.eval import EvalCase, evaluate, format_table, heldout_cases, write_json
    from wanrt.evaluate.probes import Probes
    from wanrt.reef import default_model_dir

    if args.prompts < 1:
        raise InvalidRequestError("prompts", f"must be at least 1, got {args.prompts}")
    model = args.model if args.model is not None else default_model_dir()
    pipeline = load_pipeline(model, args.backend, device=args.device)
    shape = {k: getattr(args, k) for k in ("frames", "height", "width") if getattr(args, k) is not None}
    if args.against is not None:
        return _gate(args, model, pipeline, shape)
    base = pipeline.defaults.request(**shape, steps=args.steps, guidance=args.guidance)

    def generate(case: EvalCase) -> np.ndarray:
        request = dataclasses.replace(base, prompt=case.prompt, seed=case.seed)
        return np.concatenate(list(pipeline.generate(request)))

    def show(i: int, row: dict) -> None:
        marks = " ".join(f"{k}={'ok' if row[k]['correct'] else row[k]['found']}" for k in ("motion", "palette",
                                                                                          "subject"))
        print(f"[{i + 1}/{args.prompts}] {row['seconds']:.1f}s {marks}  {row['prompt']}", file=sys.stderr)

    cases = heldout_cases(args.prompts, args.seed)
    result = evaluate(generate, cases, Probes.load(), reference=not args.no_reference, frames=base.frames,
                      height=base.height, width=base.width, progress=show)
    print(format_table(result))
    if args.json is not None:
        meta = {"model": str(model), "backend": args.backend, "identity": pipeline.identity,
                "request": {"frames": base.frames, "height": base.height, "width": base.width, "steps": base.steps,
                            "guidance": base.guidance},
                "prompt_seed": args.seed}
        write_json(args.json, result, meta)
        print(args.json)
    return 0


def _gate(args: argparse.Namespace, model: Path, pipeline: object, shape: dict[str, int]) -> int:
    import json

    from wanrt.engine.loader import load_pipeline
    from wanrt.errors import InvalidRequestError
    from wanrt.evaluate.eval import heldout_cases
    from wanrt.evaluate.gate import format_gate, parse_setting, run_gate
    from wanrt.evaluate.probes import Probes

    if not args.setting:
        raise InvalidRequestError("setting", "--against needs at least one --setting to measure")
    reference = parse_setting(args.against)
    settings = [parse_setting(text) for text in args.setting]
    loaded = {None: pipeline}

    def pipelines(other: Path | None) -> object:
        if other not in loaded:
            loaded[other] = load_pipeline(other, args.backend, device=args.device)
        return loaded[other]

    for setting in [reference, *settings]:  # a wrong model or field fails before the first clip
        setting.request(pipelines(setting.model), heldout_cases(1, args.seed)[0], shape, 0).validate(
            pipelines(setting.model).limits)
    result = run_gate(pipelines, reference, settings, heldout_cases(args.prompts, args.seed), Probes.load(), shape,
                      progress=lambda message: print(message, file=sys.stderr))
    table = format_gate(result)
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    if args.json is not None:
        meta = {"model": str(model), "backend": args.backend, "identity": pipeline.identity,
                "prompts": args.prompts, "prompt_seed": args.seed, "shape": shape}
        args.json.write_text(json.dumps({**meta, **result}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(args.json)
    return 0
