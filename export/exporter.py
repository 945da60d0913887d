"""`wanrt export`: a diffusers Wan folder -> a verified artifact folder, published atomically or not at all."""

from __future__ import annotations

import datetime
import gc
import shutil
from collections.abc import Callable
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
from wanrt.engine.spec import ModelSpec, spec_from_diffusers
from wanrt.errors import ModelFormatError
from wanrt.export import onnx_io
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
    experts: bool = True,
) -> Manifest:
    """Exports every network of the Wan pipeline in ``model_dir`` to ONNX, verifies each against PyTorch, and
    publishes the artifact at ``out_dir`` (which must not exist or be empty) only if all of it succeeded.

    ``dtype`` is the compute precision of the text encoder and experts, ``vae_dtype`` the VAE decoder's
    (export/precision.py); graph inputs and outputs are fp32 whatever they are. ``experts=False`` leaves the DiT
    experts out (`wanrt quantize`'s torch route exports them itself, quantized).
    """
    from wanrt.export.precision import VAE_DTYPES, check_dtype

    check_dtype("dtype", dtype)
    check_dtype("vae_dtype", vae_dtype, VAE_DTYPES)
    say = progress or (lambda _message: None)
    model_dir = Path(model_dir)
    spec = spec_from_diffusers(model_dir)  # a non-Wan folder fails here, before anything is written
    out_dir = destination(out_dir)
    with publishing(out_dir) as partial:  # a half-written artifact is never left behind
        manifest = _export_into(model_dir, partial, spec, external_data_threshold, say, (dtype, vae_dtype),
                                experts)
    say(f"wrote {out_dir}")
    return manifest


def _export_into(model_dir: Path, art_dir: Path, spec: ModelSpec, threshold: int, say: Progress,
                 dtypes: tuple[str, str], experts: bool = True) -> Manifest:
    from wanrt.export.text_encoder import export_text_encoder
    from wanrt.export.transformer import export_expert

    # Cheap steps first, so a broken tokenizer fails before hours of export.
    say("tokenizer")
    _write_tokenizer(model_dir / "tokenizer", art_dir / TOKENIZER_NAME, spec.text_length)
    shutil.copyfile(model_dir / "scheduler" / "scheduler_config.json", art_dir / SCHEDULER_CONFIG_NAME)

    exported: list[onnx_io.ExportedGraph] = []
    say("text_encoder: export and parity check")
    dtype, vae_dtype = dtypes
    exported.append(export_text_encoder(model_dir, art_dir, spec, external_data_threshold=threshold, dtype=dtype))
    _release()
    for name in spec.experts if experts else ():
        say(f"{name}: export and parity check")
        exported.append(export_expert(model_dir, art_dir, spec, name, external_data_threshold=threshold,
                                      dtype=dtype))
        _release()  # each real expert is 14B parameters: never hold two
    say("vae decoder: export and parity check")
    vae = _export_vae(model_dir, art_dir, threshold, vae_dtype)
    _release()

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
    )
    write_manifest(art_dir, manifest)
    return manifest


def _export_vae(model_dir: Path, art_dir: Path, threshold: int, dtype: str) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKLWan

    from wanrt.export.vae_decoder import export_vae_decoder

    vae = AutoencoderKLWan.from_pretrained(model_dir / "vae", local_files_only=True, torch_dtype=torch.float32)
    return export_vae_decoder(vae.eval(), art_dir, external_data_threshold=threshold, dtype=dtype)


def _release() -> None:
    # The exported module is unreachable once its export function returns; collect now, not at some later
    # allocation, so peak memory stays at one model.
    gc.collect()


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
