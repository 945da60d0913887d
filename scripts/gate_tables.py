"""The quality-gate tables of benchmarks/README.md: `wanrt eval --against full` on the reef demo model and on a tiny
random-weight A14B-shaped model (tests/tiny_wan.py: two experts, boundary 0.875), the latter also exported with a
LoRA per expert merged and the lightning-4step schedule.

    flock /work/wt/heavy.lock .venv/bin/python scripts/gate_tables.py --out benchmarks/results [--prompts 12]

Writes gate-reef.{md,json} and gate-tiny-a14b.{md,json}. The tiny model's exports take a few minutes each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REEF_SETTINGS = ["cache=0.3", "cache=0.5", "cache=0.7", "cache=1.0",
                 "schedule=lightning-4step,label=lightning-4step schedule (no distilled reef exists)"]
# The A14B schedule shape on the tiny model: 40 UniPC steps, guidance 4.0 / 3.0.
TINY_SHAPE = ["--frames", "17", "--height", "64", "--width", "64"]
TINY_REFERENCE = "steps=40,guidance=4,guidance_2=3"
TINY_SETTINGS = [f"{TINY_REFERENCE},cache={t}" for t in (0.05, 0.1, 0.2, 0.3)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--only", choices=("reef", "tiny"), default=None)
    args = parser.parse_args(argv)
    from wanrt.cli import main as wanrt

    args.out.mkdir(parents=True, exist_ok=True)
    common = ["eval", "--prompts", str(args.prompts)]
    if args.only in (None, "reef"):
        settings = [x for s in REEF_SETTINGS for x in ("--setting", s)]
        assert wanrt([*common, "--against", "full", *settings, "--json", str(args.out / "gate-reef.json"),
                      "--markdown", str(args.out / "gate-reef.md")]) == 0
    if args.only in (None, "tiny"):
        with tempfile.TemporaryDirectory(prefix="wanrt-gate-") as tmp:
            base, merged = _tiny_artifacts(Path(tmp))
            settings = [x for s in TINY_SETTINGS for x in ("--setting", s)]
            settings += ["--setting", f"model={merged},label=random LoRA merged + lightning-4step (calls and time "
                                      "only: not a distillation)"]
            assert wanrt([*common, "--model", str(base), *TINY_SHAPE, "--against", TINY_REFERENCE, *settings,
                          "--json", str(args.out / "gate-tiny-a14b.json"),
                          "--markdown", str(args.out / "gate-tiny-a14b.md")]) == 0
    return 0


def _tiny_artifacts(tmp: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    from lora_files import write_lora
    from tiny_wan import build_pipeline

    from wanrt.export.exporter import export_pipeline
    from wanrt.export.lora import LoraFile

    model = build_pipeline(tmp / "model")
    export_pipeline(model, tmp / "base", progress=print)
    from diffusers import WanTransformer3DModel

    loras = []
    for seed, name in enumerate(("transformer", "transformer_2")):
        path = tmp / f"{name}.safetensors"
        write_lora(WanTransformer3DModel.from_pretrained(model / name), path, seed, layout="original")
        loras.append(LoraFile(path, 1.0, name))
    export_pipeline(model, tmp / "merged", loras=loras, schedule="lightning-4step", progress=print)
    return tmp / "base", tmp / "merged"


if __name__ == "__main__":
    sys.exit(main())
