"""`wanrt quantize`: an FP32 artifact -> a new artifact whose DiT experts carry explicit Q/DQ, with its accuracy
report, published atomically (a partial sibling folder renamed at the end) or not at all.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wanrt.engine.artifact import (
    MANIFEST_NAME,
    GraphQuantization,
    Manifest,
    Quantization,
    hash_folder,
    load_artifact,
    write_manifest,
)
from wanrt.engine.graph_forms import referenced_files
from wanrt.errors import InvalidRequestError
from wanrt.export import attention
from wanrt.publish import destination, publishing
from wanrt.quant import REPORT_NAME, QuantizationError, QuantizationGateError, placement, prompts
from wanrt.quant.ptq import CALIBRATION_METHODS, MODES, ORT_SESSION_CONFIG

# The worst held-out clip must stay this close to the FP32 clip (same prompt, same noise). Chosen from
# measurements on the reef demo model (see quant/README.md): INT8 with trajectory calibration stays well
# above it, a one-sample calibration falls below.
DEFAULT_MIN_PSNR_DB = 30.0
# SmoothQuant strength per mode, the best measured on the reef model (quant/README.md).
DEFAULT_SMOOTH_ALPHA = {"int8": 0.8, "fp8": 0.7}
REPORT_SEED = 10_000  # report clips use seeds apart from calibration's 0, 1, 2, ...

Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    mode: str = "int8"
    calib_prompts: tuple[str, ...] = prompts.CALIBRATION_PROMPTS
    calib_steps: int = 8
    frames: int = 17
    height: int = 96
    width: int = 96
    calib_max_samples: int | None = None  # per expert; None: every recorded call
    calib_method: str = "max"
    smooth_alpha: float | None = None  # SmoothQuant migration strength; None: the mode's default; 0: off
    quantize_text_encoder: bool = False
    report_prompts: tuple[str, ...] = prompts.REPORT_PROMPTS
    eval_prompts: int = 0  # `wanrt eval` cases to compare (0: skip)
    min_psnr_db: float = DEFAULT_MIN_PSNR_DB
    force: bool = False
    device: str = "cpu"  # onnxruntime device of the calibration runs, the calibration itself and the report
    dtype: str = "fp32"  # compute precision of what is not quantized in the quantized graphs (export/precision.py)

    @property
    def alpha(self) -> float:
        return DEFAULT_SMOOTH_ALPHA[self.mode] if self.smooth_alpha is None else self.smooth_alpha

    def validate(self) -> None:
        if self.mode not in MODES:
            raise InvalidRequestError("mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.calib_method not in CALIBRATION_METHODS:
            raise InvalidRequestError("calib_method", f"must be one of {', '.join(CALIBRATION_METHODS)}")
        if self.calib_steps < 1:
            raise InvalidRequestError("calib_steps", f"must be at least 1, got {self.calib_steps}")
        if self.calib_max_samples is not None and self.calib_max_samples < 1:
            raise InvalidRequestError("calib_max_samples", "must be at least 1")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha < 1.0:
            raise InvalidRequestError("smooth_alpha", f"must be in [0, 1), got {self.smooth_alpha}")
        if not self.calib_prompts:
            raise InvalidRequestError("calib_prompts", "no prompt")
        if not self.report_prompts:
            raise InvalidRequestError("report_prompts", "no prompt")
        if self.device not in ("cpu", "cuda"):
            raise InvalidRequestError("device", f"must be cpu or cuda, got {self.device!r}")
        from wanrt.export.precision import check_dtype

        check_dtype("dtype", self.dtype)
        if self.eval_prompts < 0:
            raise InvalidRequestError("eval_prompts", "must be 0 or more")


def quantize_artifact(source: Path, out_dir: Path, config: QuantizeConfig, *, say: Say | None = None) -> dict:
    """Quantizes the artifact at ``source`` into ``out_dir`` (absent or empty); returns the report.

    Raises QuantizationGateError, with nothing written, when the worst held-out clip's PSNR is under
    ``config.min_psnr_db`` and ``config.force`` is not set.
    """
    say = say or (lambda _message: None)
    config.validate()
    source = Path(source)
    manifest = load_artifact(source)  # hashes checked: calibrate only what the manifest vouches for
    if manifest.quantization is not None:
        raise InvalidRequestError("model", f"{source} is already quantized; quantize the FP32 artifact")
    lowered = sorted(n for n, g in manifest.graphs.items() if g.get("dtype", "fp32") != "fp32")
    if lowered:  # calibration runs the source in onnxruntime, and its numbers must be the fp32 ones
        raise InvalidRequestError("model", f"{source} has {', '.join(lowered)} in bf16/fp16; quantize the fp32 "
                                  "export and pass --dtype for the precision of the unquantized part")
    from wanrt.quant.ptq import require_modelopt

    require_modelopt()  # before minutes of calibration runs
    out_dir = destination(out_dir)
    with publishing(out_dir) as partial:  # the gate's refusal included: nothing half-made or refused is left
        report = _quantize_into(source, manifest, partial, config, say)
    say(f"wrote {out_dir}")
    return report


def _quantize_into(source: Path, manifest: Manifest, art_dir: Path, config: QuantizeConfig, say: Say) -> dict:
    from wanrt.engine.loader import load_pipeline
    from wanrt.export.precision import cpu_session
    from wanrt.quant import calibration, isolated, ptq, report

    spec = manifest.spec
    targets = {name: placement.EXPERT_RULES for name in spec.experts}
    if config.quantize_text_encoder:
        targets["text_encoder"] = placement.TEXT_ENCODER_RULES
    for name in targets:
        if name not in manifest.graphs:
            raise QuantizationError(f"{source} has no {name} graph")
    # The graphs to quantize and their onnxruntime attention forms (remade from the quantized graph below).
    replaced = {f for name in targets for f in
                manifest.graphs[name].get("files", [manifest.graphs[name]["file"]])
                + referenced_files(manifest.graphs[name])}
    for rel in manifest.files:
        if rel not in replaced:
            (art_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, art_dir / rel)

    # Capture, then each graph's PTQ, each in a process of its own (quant/isolated.py): the fp32 pipeline is
    # loaded again only for the report, never beside ModelOpt's copy of a graph.
    scratch = art_dir / ".isolated"
    say(f"calibration: {len(config.calib_prompts)} prompts x {config.calib_steps} steps on the FP32 artifact "
        "(in a process of its own)")
    record = isolated.capture(source, config, scratch)

    graphs = dict(manifest.graphs)
    sessions, details = {}, {}
    for name in targets:
        samples = record.text_calls if name == "text_encoder" else record.samples(name)
        samples = calibration.limit_samples(samples, config.calib_max_samples)
        say(f"{name}: {config.mode} PTQ on {len(samples)} calibration calls (in a process of its own)")
        samples_path = isolated.save_samples(samples, scratch / f"{name}-samples.npz")
        entry, detail = isolated.quantize_graph(source, art_dir, manifest.graphs[name], name, samples_path, config,
                                                scratch)
        graphs[name] = entry
        details[name] = GraphQuantization.from_dict(detail)
        # onnxruntime's CPU provider has no bf16 MatMul: bf16 graphs run emulated there (precision.emulate_bf16).
        on_cpu_bf16 = config.dtype == "bf16" and config.device == "cpu"
        sessions[name] = cpu_session(art_dir / entry["file"], ptq.ORT_SESSION_CONFIG) if on_cpu_bf16 \
            else ptq.session(art_dir / entry["file"], config.device)
    shutil.rmtree(scratch)
    pipeline = load_pipeline(source, "onnxruntime", device=config.device)

    networks = report.QuantizedNetworks({n: s for n, s in sessions.items() if n != "text_encoder"},
                                        sessions.get("text_encoder"))
    report_requests = calibration.calibration_requests(config.report_prompts, steps=config.calib_steps,
                                                       frames=config.frames, height=config.height,
                                                       width=config.width, first_seed=REPORT_SEED)
    result = _report(pipeline, networks, report_requests, config, source, say)
    (art_dir / REPORT_NAME).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    say(report.format_table(result))
    if not result["gate"]["passed"] and not config.force:
        raise QuantizationGateError(
            f"worst held-out clip PSNR {result['gate']['value_db']:.2f} dB is under the gate's "
            f"{config.min_psnr_db:.1f} dB: nothing written (better calibration data, or --force to keep it)")

    quantization = _quantization(source, config, record, details, result)
    new = dataclasses.replace(
        manifest, graphs=graphs, files=hash_folder(art_dir),
        versions={**manifest.versions, **quantization.tools}, quantization=quantization,
        created_utc=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    write_manifest(art_dir, new)
    load_artifact(art_dir)  # what we publish must read back, hashes included
    return result


def _quantize_one(source: Path, art_dir: Path, entry: dict[str, Any], name: str, rules: tuple[placement.Rule, ...],
                  samples: list, config: QuantizeConfig) -> tuple[Any, dict[str, Any], GraphQuantization]:
    from wanrt.quant import ptq, smooth

    model = ptq.load_graph(source / entry["file"])
    plan = placement.plan(model, rules)
    smoothed = {}
    if config.alpha > 0:
        smoothed = smooth.smooth(model, plan.quantize, samples, config.alpha)
    dest = art_dir / entry["file"]
    quantized = ptq.quantize_graph(model, dest, mode=config.mode, samples=samples, nodes_to_quantize=plan.quantize,
                                   nodes_to_exclude=[d.name for d in plan.excluded],
                                   calibration_method=config.calib_method, scratch=art_dir / ".scratch",
                                   device=config.device)
    done, problems = placement.check_placement(quantized, plan, config.mode)
    if problems:
        raise QuantizationError(f"{name}: the quantized graph breaks the placement rules: {'; '.join(problems[:5])}")
    skipped = [d for d in plan.decisions if d.quantize and d.name not in set(done)]
    excluded = [d.as_dict() for d in plan.excluded] + [
        {**d.as_dict(), "reason": "left in high precision by ModelOpt"} for d in skipped]
    files = [dest.name] + ([dest.name + ".data"] if (art_dir / (dest.name + ".data")).exists() else [])
    precision = {"dtype": "fp32"}
    if config.dtype != "fp32":  # after the placement check, which reads the fp32 Q/DQ graph
        from wanrt.export.precision import RULES, lower_graph, scopes_of

        rules = RULES["text_encoder" if name == "text_encoder" else "expert"]
        precision = lower_graph(dest, config.dtype, rules, external_data=len(files) > 1,
                                scopes=scopes_of(model)).as_dict()  # its opset replaces the fp32 graph's
    opset = next((o.version for o in quantized.opset_import if o.domain in ("", "ai.onnx")), None)
    new_entry = {**entry, "files": files, "opset": opset, **precision}
    if "attention" in entry:  # the Q/DQ graph's own onnxruntime form (fp32 only, as export makes it)
        new_entry["attention"], _ = attention.record(dest, lambda variant: [
            _check_onnxruntime_form(dest, variant, samples[0], config.device)], shapes_from=source / entry["file"],
            onnxruntime_form=config.dtype == "fp32")
    detail = GraphQuantization(
        quantized=[{"name": d.name, "module": d.module} for d in plan.decisions if d.name in set(done)],
        excluded=excluded, calibration_calls=len(samples),
        smoothquant={"alpha": config.alpha, "activations": len(smoothed)} if smoothed else None)
    return quantized, new_entry, detail


def _check_onnxruntime_form(graph: Path, variant: Path, feeds: dict[str, Any], device: str) -> float:
    """The onnxruntime form against the Q/DQ graph, attention by attention on a calibration call's tensors
    (export/form_check.py: why not the whole graphs, which a QuantizeLinear after attention sets a step apart)."""
    from wanrt.errors import ExportVerificationError
    from wanrt.export.form_check import check_onnxruntime_form
    from wanrt.export.onnx_io import PARITY_TOLERANCE
    from wanrt.quant import ptq

    try:
        return check_onnxruntime_form(graph, variant, feeds, lambda model: ptq.session(model, device),
                                      tolerance=PARITY_TOLERANCE)
    except ExportVerificationError as err:
        raise QuantizationError(str(err)) from None


def _report(pipeline: Any, networks: Any, requests: list, config: QuantizeConfig, source: Path,
            say: Say) -> dict[str, Any]:
    from wanrt.quant import report

    req = requests[0]
    result: dict[str, Any] = {
        "mode": config.mode,
        "reference": {"artifact": str(source.resolve()),
                      "manifest_sha256": hashlib.sha256((source / MANIFEST_NAME).read_bytes()).hexdigest()},
        "request": {"frames": req.frames, "height": req.height, "width": req.width, "steps": req.steps,
                    "guidance": req.guidance, "first_seed": req.seed},
        "prompts": [r.prompt for r in requests],
    }
    result.update(report.measure(pipeline, networks, requests, say))
    if config.eval_prompts:
        # `wanrt eval`'s own defaults (steps, guidance), so the numbers match what it prints for either artifact.
        from wanrt.engine.request import GenerationRequest

        base = GenerationRequest(prompt="-", frames=config.frames, height=config.height, width=config.width)
        result["eval"] = report.eval_change(pipeline, networks, config.eval_prompts, say, base)
    worst = result["end_to_end"]["psnr_db_min"]
    result["gate"] = {"metric": "end-to-end PSNR of the worst held-out clip (dB)", "value_db": worst,
                      "threshold_db": config.min_psnr_db, "passed": worst >= config.min_psnr_db,
                      "forced": config.force}
    return result


def _quantization(source: Path, config: QuantizeConfig, record: Any, details: dict[str, GraphQuantization],
                  result: dict[str, Any]) -> Quantization:
    import onnx
    import onnxruntime

    import wanrt
    from wanrt.quant.ptq import modelopt_version

    experts = {n: d for n, d in details.items() if n != "text_encoder"}
    return Quantization(
        mode=config.mode,
        graphs=details,
        # What the report's sessions used, and what the serving backend reads back (see ptq.ORT_SESSION_CONFIG).
        onnxruntime_session_config=dict(ORT_SESSION_CONFIG),
        weights=f"{config.mode} symmetric, per output channel (constant, behind DequantizeLinear)",
        activations=f"{config.mode} per tensor (QuantizeLinear/DequantizeLinear), calibration "
                    f"'{config.calib_method}'",
        tools={"nvidia-modelopt": modelopt_version(), "onnx": onnx.__version__,
               "onnxruntime": onnxruntime.__version__, "wanrt": wanrt.__version__},
        source={"artifact": str(source.resolve()),
                "manifest_sha256": hashlib.sha256((source / MANIFEST_NAME).read_bytes()).hexdigest()},
        calibration={
            "prompts_sha256": prompts.prompts_sha256(config.calib_prompts),
            "prompts": len(config.calib_prompts),
            "steps": config.calib_steps,
            "request": {"frames": config.frames, "height": config.height, "width": config.width},
            "calls": {n: d.calibration_calls for n, d in details.items()},
            "recorded_calls": {n: len(record.samples(n)) for n in experts},
            "max_samples": config.calib_max_samples,
            "method": config.calib_method,
            "smoothquant_alpha": config.alpha,
        },
        unquantized={"vae_decoder": "fp32", "text_encoder": "quantized" if "text_encoder" in details else "fp32",
                     "never_quantized_ops": list(placement.NEVER_QUANTIZED),
                     "quantized_graphs_dtype": config.dtype},
        report={"file": REPORT_NAME, "psnr_db_mean": result["end_to_end"]["psnr_db_mean"],
                "psnr_db_min": result["end_to_end"]["psnr_db_min"], "ssim_mean": result["end_to_end"]["ssim_mean"],
                "experts": {n: {"rel_error_mean": e["rel_error_mean"], "cosine_min": e["cosine_min"]}
                            for n, e in result["experts"].items()},
                **({"eval_change_points": result["eval"]["change_points"]} if "eval" in result else {})},
        gate=result["gate"],
    )
