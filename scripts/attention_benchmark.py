"""Attention before and after issue 22, side by side in one run: peak memory and time of one expert step and of
whole clips, on onnxruntime (CPU) and torch.

    flock /tmp/wanrt-heavy.lock .venv/bin/python scripts/attention_benchmark.py [--work DIR] [--only NAME ...]

Forms compared (each measured in a fresh process, so peak RSS is that form's alone):
  torch      diffusers' own module (scaled_dot_product_attention), what `--backend torch` runs
  before     the graph as wanrt exported it until now (opset 18: MatMul -> Softmax -> MatMul)
  attention  the graph exported now (opset 23, one ONNX Attention node; what TensorRT builds from), on onnxruntime
  mha        its onnxruntime form (com.microsoft.MultiHeadAttention), what `--backend onnxruntime` runs now

Models have random weights: memory and time depend on the architecture and the sizes, not on the weight values.
"Peak" is the process's resident high-water mark during the measured work (Linux VmHWM, reset after loading:
weights, libraries and the run's buffers, not load-time transients); "time" is one call (step) or one
`generate` (clip: text encoder, every step, VAE decode), after loading; a step is the fastest of 2 to 5
calls (one when a call takes over 20 s). Every form's output is compared with
torch's (max relative error), so the numbers are for graphs that compute the same thing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.engine.shapes import latent_shape

ROOT = Path(__file__).resolve().parent.parent
FORMS = ("torch", "before", "attention", "mha")
CLIP_FORMS = ("torch", "before", "mha")


@dataclasses.dataclass(frozen=True)
class StepCase:
    """One expert call: ``batch`` x (latent frames, height, width) latents, ``text`` context tokens."""

    name: str
    model: str  # "tiny" (tests/tiny_wan.py), "reef" (reef/networks.py, TrainConfig.gpu()), "a14b" (1 layer, full width)
    batch: int
    latent: tuple[int, int, int]
    text: int
    label: str

    def tokens(self, patch: tuple[int, int, int] = (1, 2, 2)) -> int:
        f, h, w = self.latent
        return f // patch[0] * (h // patch[1]) * (w // patch[2])


@dataclasses.dataclass(frozen=True)
class ClipCase:
    name: str
    model: str  # "tiny" or "reef"
    frames: int
    height: int
    width: int
    steps: int
    label: str


STEP_CASES = (
    StepCase("reef-step", "reef", 2, (5, 12, 12), 512, "reef architecture, 17x96x96, CFG pair"),
    StepCase("tiny-step", "tiny", 2, (21, 32, 32), 512, "tiny model, 81x256x256, CFG pair"),
    # Full width (40 heads x 128, dim 5120, ffn 13824, text 4096), one layer. Two latent frames of 480p
    # (60x104): the most tokens at which the materialising graph still fits the shared machine's 12 GB.
    StepCase("a14b-step", "a14b", 1, (2, 60, 104), 512, "A14B expert, 1 layer, 480p x 2 latent frames, 1 prompt"),
)
CLIP_CASES = (
    ClipCase("reef-clip", "reef", 17, 96, 96, 8, "reef architecture, 17x96x96, 8 steps"),
    ClipCase("tiny-clip", "tiny", 81, 256, 256, 20, "tiny model, 81x256x256, 20 steps"),
)


# --- models (children only) ------------------------------------------------------------------------------

def _build_expert(model: str) -> Any:
    import torch

    torch.manual_seed(0)  # prepare and the torch form build the same weights
    if model == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_wan import build_transformer

        return build_transformer(1)
    if model == "reef":
        from wanrt.reef.config import TrainConfig
        from wanrt.reef.networks import build_expert

        return build_expert(TrainConfig.gpu()).eval()
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(  # Wan2.2-T2V-A14B's transformer config, num_layers 40 -> 1
        patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024).eval()


def _build_pipeline(model: str, out: Path) -> Path:
    if model == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_wan import build_pipeline

        return build_pipeline(out, two_experts=True)
    import torch
    from diffusers import WanPipeline
    from transformers import PreTrainedTokenizerFast

    from wanrt.reef.config import TrainConfig
    from wanrt.reef.flow import BOUNDARY_RATIO
    from wanrt.reef.networks import build_expert, build_scheduler, build_text_encoder, build_vae

    cfg = TrainConfig.gpu()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(ROOT / "reef" / "model" / "tokenizer.json"),
                                        pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=build_text_encoder(len(tokenizer), cfg).eval(),
                       vae=build_vae(cfg).eval(), scheduler=build_scheduler(cfg), transformer=build_expert(cfg).eval(),
                       transformer_2=build_expert(cfg).eval(), boundary_ratio=BOUNDARY_RATIO)
    pipe.save_pretrained(out)
    return out


def _step_feeds(case: StepCase, text_dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"hidden_states": rng.standard_normal((case.batch, 16, *case.latent), dtype=np.float32),
            "timestep": np.full((case.batch,), 900.0, np.float32),
            "encoder_hidden_states": rng.standard_normal((case.batch, case.text, text_dim), dtype=np.float32)}


def prepare_step(case: StepCase, work: Path) -> None:
    """Writes the inputs and the graph in the before / attention / mha forms."""
    import torch

    from wanrt.export import onnx_io
    from wanrt.export.onnxruntime_attention import write_onnxruntime_variant
    from wanrt.export.transformer import ExpertGraph

    module = ExpertGraph(_build_expert(case.model)).eval()
    feeds = _step_feeds(case, module.transformer.config.text_dim)
    np.savez(work / "feeds.npz", **feeds)
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    for name, opset in (("before", 18), ("attention", onnx_io.OPSET)):
        onnx_io.export_graph(module, args, work / f"{name}.onnx", input_names=list(feeds),
                             output_names=["noise_pred"], dynamic_shapes=None, opset=opset)
    variant = write_onnxruntime_variant(work / "attention.onnx")
    assert variant is not None
    # The mha form's own name; its weights are attention.onnx.data when the graph has external data.
    variant.path.rename(work / "mha.onnx")


def measure_step(case: StepCase, form: str, work: Path) -> dict[str, Any]:
    feeds = dict(np.load(work / "feeds.npz"))
    if form == "torch":
        import torch

        module = _build_expert(case.model)  # seeded: the weights prepare exported
        with torch.no_grad():
            _reset_peak()
            out, seconds = _timed(lambda: module(
                hidden_states=torch.from_numpy(feeds["hidden_states"]), timestep=torch.from_numpy(feeds["timestep"]),
                encoder_hidden_states=torch.from_numpy(feeds["encoder_hidden_states"]), return_dict=False)[0].numpy())
    else:
        session = _session(work / f"{form}.onnx")
        _reset_peak()
        out, seconds = _timed(lambda: session.run(None, feeds)[0])
    result = {"seconds": seconds, "peak_mb": _peak_mb()}
    np.save(work / f"out_{form}.npy", out)
    return result


def _timed(call: Any) -> tuple[Any, float]:
    """The fastest of 2 to 5 calls (the first pays one-time kernel setup), stopping once 3 s were spent; a call
    over 20 s (the large cases) runs once."""
    best, spent, out = float("inf"), 0.0, None
    for attempt in range(5):
        start = time.perf_counter()
        out = call()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if took > 20.0 or (attempt >= 1 and spent > 3.0):
            break
    return out, best


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the resident high-water mark (Linux)
        f.write("5")


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def prepare_clip(case: ClipCase, work: Path) -> None:
    """A diffusers folder, its artifact as exported now, and a copy whose experts are exported as before."""
    from unittest import mock

    from wanrt.engine.artifact import load_artifact
    from wanrt.export import attention, onnx_io
    from wanrt.export.exporter import export_pipeline
    from wanrt.export.transformer import export_expert

    model_dir = _build_pipeline(case.model, work / "diffusers")
    export_pipeline(model_dir, work / "after")
    # The experts as wanrt exported them before (opset 18), in an otherwise identical artifact.
    before = work / "before"
    shutil.copytree(work / "after", before)
    manifest = load_artifact(before)
    for name in manifest.spec.experts:
        for suffix in (".onnx", ".ort.onnx"):
            (before / f"{name}{suffix}").unlink()
        with mock.patch.object(onnx_io, "OPSET", 18), \
                mock.patch.object(attention, "record", lambda *a, **k: ({}, [])):
            export_expert(model_dir, before, manifest.spec, name)
    _rewrite_manifest(before, manifest.spec.experts)


def _rewrite_manifest(art: Path, experts: tuple[str, ...]) -> None:
    from wanrt.engine.artifact import MANIFEST_NAME, hash_folder

    path = art / MANIFEST_NAME
    data = json.loads(path.read_text())
    for name in experts:
        data["graphs"][name].pop("attention", None)
    data["files"] = hash_folder(art)
    path.write_text(json.dumps(data, indent=2) + "\n")


def measure_clip(case: ClipCase, form: str, work: Path) -> dict[str, Any]:
    from wanrt.engine.loader import load_pipeline
    from wanrt.engine.request import GenerationRequest

    model = {"torch": work / "diffusers", "before": work / "before", "mha": work / "after"}[form]
    pipeline = load_pipeline(model, "torch" if form == "torch" else "onnxruntime")
    latents = np.random.default_rng(0).standard_normal(
        latent_shape(case.frames, case.height, case.width), dtype=np.float32)
    request = GenerationRequest(prompt="a school of fish swims left in deep blue water", frames=case.frames,
                                height=case.height, width=case.width, steps=case.steps, latents=latents)
    _reset_peak()
    start = time.perf_counter()
    frames = np.concatenate(list(pipeline.generate(request)))
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "peak_mb": _peak_mb()}
    np.save(work / f"out_{form}.npy", frames)
    return result


# --- the parent: one process per measurement, then the table ----------------------------------------------

def _child(*args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {"error": f"exit {proc.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"}
    return json.loads(lines[-1])


def _difference(work: Path, form: str, clip: bool) -> float | None:
    """Against torch: max relative error of a step's output, or max difference of a clip's uint8 frames."""
    ours, ref = work / f"out_{form}.npy", work / "out_torch.npy"
    if not (ours.exists() and ref.exists()):
        return None
    a, b = np.load(ours).astype(np.float64), np.load(ref).astype(np.float64)
    diff = float(np.abs(a - b).max())
    return diff if clip else diff / max(float(np.abs(b).max()), 1e-12)


def _row(label: str, results: dict[str, dict[str, Any]], work: Path, forms: tuple[str, ...], clip: bool) -> str:
    cells = []
    for form in forms:
        r = results[form]
        if "error" in r:
            cells.append(f"failed ({r['error'][:60]})")
            continue
        diff = _difference(work, form, clip)
        extra = "" if form == "torch" or diff is None else (
            f", max diff {diff:.0f} levels" if clip else f", rel err {diff:.1e}")
        cells.append(f"{r['peak_mb'] / 1024:.2f} GB, {r['seconds']:.2f} s{extra}")
    before, now = results.get("before", {}), results.get("mha", {})
    ratio = (f"{before['peak_mb'] / now['peak_mb']:.1f}x less memory, {before['seconds'] / now['seconds']:.1f}x "
             "faster") if "peak_mb" in before and "peak_mb" in now else "-"
    return f"| {label} | " + " | ".join(cells) + f" | {ratio} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/wanrt-attention-benchmark"))
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    parser.add_argument("--child", nargs=3, metavar=("ACTION", "CASE", "FORM"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = {c.name: c for c in (*STEP_CASES, *CLIP_CASES)}
    if args.child:
        action, name, form = args.child
        work = args.work / name
        case = cases[name]
        result: dict[str, Any] = {}
        if action == "prepare":
            (prepare_step if isinstance(case, StepCase) else prepare_clip)(case, work)
        else:
            result = (measure_step if isinstance(case, StepCase) else measure_clip)(case, form, work)
        result["process_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result), flush=True)
        return 0

    import onnxruntime
    import torch

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
    step_rows, clip_rows = [], []
    for name in args.only or list(cases):
        case = cases[name]
        work = args.work / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        prepared = _child("--work", str(args.work), "--child", "prepare", name, "-")
        if "error" in prepared:
            print(f"{name}: prepare failed: {prepared['error']}", flush=True)
            continue
        forms = FORMS if isinstance(case, StepCase) else CLIP_FORMS
        results = {}
        for form in forms:
            results[form] = _child("--work", str(args.work), "--child", "measure", name, form)
            print(f"{name} {form}: {results[form]}", flush=True)
        label = (f"{case.label} ({case.tokens()} tokens)" if isinstance(case, StepCase) else case.label)
        row = _row(label, results, work, forms, clip=isinstance(case, ClipCase))
        print(row, flush=True)  # as soon as the case is done: the tables below repeat it
        (step_rows if isinstance(case, StepCase) else clip_rows).append(row)
        shutil.rmtree(work, ignore_errors=True)
    if step_rows:
        print("\nOne expert step (peak resident memory during the call, time of the call):\n")
        print("| case | torch (SDPA) | onnxruntime, before (MatMul/Softmax) | onnxruntime, Attention op | "
              "onnxruntime, MultiHeadAttention (served) | before -> served |")
        print("|---|---|---|---|---|---|")
        print("\n".join(step_rows))
    if clip_rows:
        print("\nWhole clip, `generate` (peak resident memory during the clip, time of the clip):\n")
        print("| case | torch backend | onnxruntime, before | onnxruntime, now (MultiHeadAttention) | "
              "before -> now |")
        print("|---|---|---|---|---|")
        print("\n".join(clip_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
