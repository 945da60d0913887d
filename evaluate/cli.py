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
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--steps", type=int, default=None, help="default: the engine's default")
    parser.add_argument("--guidance", type=float, default=None, help="default: the engine's default")
    parser.add_argument("--json", type=Path, default=None, help="write every prompt's readings and the summary")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip scoring the renderer's own clips (the probes' ceiling)")
    parser.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np

    from wanrt.engine.loader import load_pipeline
    from wanrt.engine.request import GenerationRequest
    from wanrt.errors import InvalidRequestError
    from wanrt.evaluate.eval import EvalCase, evaluate, format_table, heldout_cases, write_json
    from wanrt.evaluate.probes import Probes
    from wanrt.reef import default_model_dir

    if args.prompts < 1:
        raise InvalidRequestError("prompts", f"must be at least 1, got {args.prompts}")
    model = args.model if args.model is not None else default_model_dir()
    pipeline = load_pipeline(model, args.backend, device=args.device)
    base = dataclasses.replace(GenerationRequest.defaults(), frames=args.frames, height=args.height,
                               width=args.width)
    if args.steps is not None:
        base = dataclasses.replace(base, steps=args.steps)
    if args.guidance is not None:
        base = dataclasses.replace(base, guidance=args.guidance)

    def generate(case: EvalCase) -> np.ndarray:
        request = dataclasses.replace(base, prompt=case.prompt, seed=case.seed)
        return np.concatenate(list(pipeline.generate(request)))

    def show(i: int, row: dict) -> None:
        marks = " ".join(f"{k}={'ok' if row[k]['correct'] else row[k]['found']}" for k in ("motion", "palette",
                                                                                          "subject"))
        print(f"[{i + 1}/{args.prompts}] {row['seconds']:.1f}s {marks}  {row['prompt']}", file=sys.stderr)

    cases = heldout_cases(args.prompts, args.seed)
    result = evaluate(generate, cases, Probes.load(), reference=not args.no_reference, frames=args.frames,
                      height=args.height, width=args.width, progress=show)
    print(format_table(result))
    if args.json is not None:
        meta = {"model": str(model), "backend": args.backend, "identity": pipeline.identity,
                "request": {"frames": base.frames, "height": base.height, "width": base.width, "steps": base.steps,
                            "guidance": base.guidance},
                "prompt_seed": args.seed}
        write_json(args.json, result, meta)
        print(args.json)
    return 0
