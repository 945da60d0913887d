"""`wanrt export`: a diffusers Wan folder -> a verified artifact folder, published atomically or not at all."""

from __future__ import annotations

import datetime
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wanrt.engine.artifact import (
    FORMAT_VERSION,
    SCHEDULER_CONFIG_NAME,
    TOKENIZER_NAME,
    Manifest,
    hash_folder,
    sha256_file,
    write_manifest,
)
from wanrt.engine.defaults import ModelDefaults
from wanrt.engine.schedules import BASE
from wanrt.engine.spec import ModelSpec, spec_from_diffusers
from wanrt.errors import ModelFormatError
from wanrt.export import onnx_io
from wanrt.export.lora import LoraFile, merge_loras
from wanrt.export.onnx_io import release
from wanrt.publish import destination, publishing

Progress = Callable[[str], None]


def export_pipeline(
    model_dir: Path,
    out_dir: Path,
    *,
    external_data_threshold: int = onnx_io.EXTERNAL_DATA_THRESHOLD_BYTES,
    progress: Progress | None = None,
    dtype: str = "fp32",
    vae_dtype: str = "fp32",
    loras: Sequence[LoraFile] = (),
    schedule: str = BASE,
    device: str = "cpu",
    memory_budget: int | None = None,
    experts: bool = True,
) -> Manifest:
    """Exports every network of the Wan pipeline in ``model_dir`` to ONNX, verifies each against PyTorch, and
    publishes the artifact at ``out_dir`` (which must not exist or be empty) only if all of it succeeded.

    ``dtype`` is the compute precision of the text encoder and experts (each is loaded in it, as diffusers and
    transformers run it), ``vae_dtype`` the VAE decoder's (export/precision.py); graph inputs and outputs are
    fp32 whatever they are. ``device``: where PyTorch runs (loading, tracing, the parity references) and where
    onnxruntime checks parity (``cuda``: onnxruntime-gpu's CUDA provider). ``loras`` are merged into their
    experts before export (export/lora.py); ``schedule`` is the artifact's default schedule
    (engine/schedules.py), recorded with the model's recipe as the manifest's request defaults.
    ``experts=False`` leaves the DiT experts out (`wanrt quantize`'s torch route exports them itself, quantized).

    Before anything is written, the plan (wanrt.plan) of this export is checked against this machine (host
    memory: ``memory_budget`` or the cgroup/physical limit less a reserve; free disk at ``out_dir``; the GPU's
    free memory for ``cuda``): InsufficientMemoryError names the option that would fit.
    """
    from wanrt.engine.backends.onnxruntime import return_freed_memory
    from wanrt.engine.device import parse_device
    from wanrt.export.precision import VAE_DTYPES, check_dtype

    check_dtype("dtype", dtype)
    check_dtype("vae_dtype", vae_dtype, VAE_DTYPES)
    device = str(parse_device(device))
    say = progress or (lambda _message: None)
    model_dir = Path(model_dir)
    spec = spec_from_diffusers(model_dir)  # a non-Wan folder fails here, before anything is written
    defaults = model_defaults(model_dir, spec, schedule)  # so do a bad recipe and a schedule the model cannot run
    for lora in loras:
        if lora.expert not in spec.experts:
            raise ModelFormatError(f"{lora.path}: the model has no {lora.expert!r} (--lora-2 is for the low-noise "
                                   "expert of a two-expert model)")
    out_dir = destination(out_dir)
    say(check_plan(model_dir, out_dir, dtype=dtype, vae_dtype=vae_dtype, device=device, memory_budget=memory_budget))
    return_freed_memory()  # a freed shard or module goes back to the system, not to the heap's free lists
    with publishing(out_dir) as partial:  # a half-written artifact is never left behind
        manifest = _export_into(model_dir, partial, spec, external_data_threshold, say, (dtype, vae_dtype), device,
                                list(loras), defaults, experts)
    say(f"wrote {out_dir}")
    return manifest


def check_plan(model_dir: Path, out_dir: Path, *, dtype: str, vae_dtype: str, device: str,
               memory_budget: int | None = None) -> str:
    """Refuses (InsufficientMemoryError) an export its plan says this machine cannot hold; else a one-line
    summary of the plan."""
    from wanrt.engine.device import parse_device
    from wanrt.plan.checkpoint import read_checkpoint
    from wanrt.plan.refusal import refuse_unless_fits, this_machine
    from wanrt.plan.report import export_alternatives
    from wanrt.plan.stages import duration, export_plan, gb

    device = str(parse_device(device))
    checkpoint = read_checkpoint(model_dir)
    plan = export_plan(checkpoint, dtype=dtype, vae_dtype=vae_dtype, device=device)
    machine = this_machine(out_dir, device=device, host_bytes=memory_budget)
    refuse_unless_fits(plan, machine, export_alternatives(checkpoint, dtype=dtype, vae_dtype=vae_dtype, device=device))
    return (f"plan: host peak {gb(plan.host_bytes)} of {gb(machine.host_bytes)}"
            + (f", GPU {gb(plan.gpu_bytes)}" if plan.gpu_bytes else "")
            + f", writes {gb(plan.disk_bytes)}, {duration(plan.seconds)}")


def _export_into(model_dir: Path, art_dir: Path, spec: ModelSpec, threshold: int, say: Progress,
                 dtypes: tuple[str, str], device: str, loras: list[LoraFile], defaults: ModelDefaults,
                 experts: bool = True) -> Manifest:
    from wanrt.export.text_encoder import export_text_encoder
    from wanrt.export.transformer import export_expert

    # Cheap steps first, so a broken tokenizer fails before hours of export.
    say("tokenizer")
    _write_tokenizer(model_dir / "tokenizer", art_dir / TOKENIZER_NAME, spec.text_length)
    shutil.copyfile(model_dir / "scheduler" / "scheduler_config.json", art_dir / SCHEDULER_CONFIG_NAME)

    exported: list[onnx_io.ExportedGraph] = []
    dtype, vae_dtype = dtypes
    say(f"text_encoder: load ({dtype}, {device})")
    exported.append(export_text_encoder(model_dir, art_dir, spec, external_data_threshold=threshold, dtype=dtype,
                                        device=device, progress=say))
    release(device)
    merged: list[dict[str, Any]] = []
    for name in spec.experts if experts else ():
        mine = [lora for lora in loras if lora.expert == name]
        say(f"{name}: {'merge ' + str(len(mine)) + ' LoRA, ' if mine else ''}load ({dtype}, {device})")
        merge = (lambda module, mine=mine: merged.extend(merge_loras(module, mine))) if mine else None
        exported.append(export_expert(model_dir, art_dir, spec, name, external_data_threshold=threshold,
                                      dtype=dtype, device=device, progress=say, merge=merge))
        release(device)  # each real expert is 14B parameters: never hold two
    say("vae decoder: export and parity check")
    vae = _export_vae(model_dir, art_dir, threshold, vae_dtype)
    release()

    graphs = {g.name: g.manifest_entry() for g in exported}
    graphs["vae_decoder_init"] = vae.pop("init")
    graphs["vae_decoder_step"] = vae.pop("step")
    parity = [p.as_dict() for g in exported for p in g.parity] + vae.pop("parity")
    say("hashing files")
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        source_model=_source_identity(model_dir),
        spec=spec,
        graphs=graphs,
        vae_decoder=vae,
        files=hash_folder(art_dir),
        opset=onnx_io.OPSET,
        versions=_versions(),
        parity=parity,
        created_utc=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        defaults=defaults,
        loras=merged or None,
    )
    write_manifest(art_dir, manifest)
    return manifest


def model_defaults(model_dir: Path, spec: ModelSpec, schedule: str) -> ModelDefaults:
    """The request defaults an export records: the model's recipe, with ``schedule``'s steps and guidance when
    it is a preset; a preset whose expert split differs from its authors' on this model is refused."""
    from wanrt.engine.defaults import defaults_from_recipe, recipe_for
    from wanrt.engine.schedules import PRESETS, check_schedule, make_scheduler

    try:
        check_schedule(schedule)
    except ValueError as err:
        raise ModelFormatError(str(err)) from None
    defaults = defaults_from_recipe(recipe_for(model_dir, spec), spec, schedule)
    preset = PRESETS.get(schedule)
    if preset is not None and preset.expert_steps is not None and len(spec.experts) == 2:
        timesteps = make_scheduler(spec.scheduler_config, schedule, preset.steps).timesteps
        high = sum(spec.expert_for(float(t)) == spec.experts[0] for t in timesteps)
        if (high, len(timesteps) - high) != preset.expert_steps:
            raise ModelFormatError(f"schedule {schedule}: this model's boundary gives {high} high-noise and "
                                   f"{len(timesteps) - high} low-noise steps, its authors use {preset.expert_steps}")
    return defaults


def _export_vae(model_dir: Path, art_dir: Path, threshold: int, dtype: str) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKLWan

    from wanrt.export.vae_decoder import export_vae_decoder

    vae = AutoencoderKLWan.from_pretrained(model_dir / "vae", local_files_only=True, torch_dtype=torch.float32)
    return export_vae_decoder(vae.eval(), art_dir, external_data_threshold=threshold, dtype=dtype)


def _write_tokenizer(tokenizer_dir: Path, dest: Path, text_length: int) -> None:
    """Copies the fast tokenizer's tokenizer.json, or makes one from a slow (sentencepiece) tokenizer."""
    from wanrt.engine.text import PromptTokenizer

    source = tokenizer_dir / "tokenizer.json"
    if source.is_file():
        shutil.copyfile(source, dest)
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=True, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ModelFormatError(f"cannot load the tokenizer in {tokenizer_dir}: {err}") from None
        if not getattr(tokenizer, "is_fast", False):
            raise ModelFormatError(f"{tokenizer_dir} has no tokenizer.json and transformers cannot convert it")
        tokenizer.backend_tokenizer.save(str(dest))
    PromptTokenizer(dest, text_length)  # the serving path must be able to read it (and find <pad>)


def _source_identity(model_dir: Path) -> dict[str, Any]:
    """The source folder and hashes of its configs (not its weights: re-reading tens of GB says little more)."""
    configs = sorted([model_dir / "model_index.json", *model_dir.glob("*/*.json")])
    return {"path": str(model_dir.resolve()),
            "config_sha256": {p.relative_to(model_dir).as_posix(): sha256_file(p) for p in configs}}


def _versions() -> dict[str, str]:
    import diffusers
    import onnx
    import onnxruntime
    import onnxscript
    import torch
    import transformers

    import wanrt

    modules = (torch, diffusers, transformers, onnx, onnxscript, onnxruntime, wanrt)
    return {m.__name__: str(m.__version__) for m in modules}
