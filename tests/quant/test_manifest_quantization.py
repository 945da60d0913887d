"""The manifest's typed ``quantization`` section: old manifests still load, the layout `wanrt quantize` has
always written round-trips, and the onnxruntime backend takes its session config from it. No ModelOpt needed."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import pytest

from wanrt.engine.artifact import (
    MANIFEST_NAME,
    GraphQuantization,
    Manifest,
    Quantization,
    load_artifact,
    write_manifest,
)
from wanrt.engine.loader import load_pipeline
from wanrt.errors import ArtifactError
from wanrt.reef import default_model_dir

# The block as quant/quantizer.py wrote it before it became a typed field (trimmed lists; same keys).
OLD_BLOCK = {
    "mode": "int8",
    "weights": "int8 symmetric, per output channel (constant, behind DequantizeLinear)",
    "activations": "int8 per tensor (QuantizeLinear/DequantizeLinear), calibration 'max'",
    "tools": {"nvidia-modelopt": "0.47.0", "onnx": "1.20.0", "onnxruntime": "1.31.0", "wanrt": "0.1.0"},
    "source": {"artifact": "/models/reef", "manifest_sha256": "0" * 64},
    "calibration": {"prompts_sha256": "1" * 64, "prompts": 2, "steps": 4,
                    "request": {"frames": 5, "height": 32, "width": 32},
                    "calls": {"transformer": 4}, "recorded_calls": {"transformer": 4}, "max_samples": None,
                    "method": "max", "smoothquant_alpha": 0.8},
    "graphs": {"transformer": {
        "quantized": [{"name": "node_MatMul_1", "module": "blocks.0.attn1.to_q"}],
        "excluded": [{"name": "node_MatMul_9", "op": "MatMul", "module": "proj_out", "reason": "final projection"}],
        "calibration_calls": 4, "smoothquant": {"alpha": 0.8, "activations": 13}}},
    "unquantized": {"vae_decoder": "fp32", "text_encoder": "fp32", "never_quantized_ops": ["Softmax"]},
    "onnxruntime_session_config": {"session.disable_quant_qdq": "1"},
    "report": {"file": "quant_report.json", "psnr_db_mean": 40.1, "psnr_db_min": 39.0, "ssim_mean": 0.99,
               "experts": {"transformer": {"rel_error_mean": 0.01, "cosine_min": 0.9999}}},
    "gate": {"metric": "end-to-end PSNR", "value_db": 39.0, "threshold_db": 30.0, "passed": True, "forced": False},
}


def test_the_shipped_fp32_manifest_loads_and_writes_back_unchanged():
    path = default_model_dir() / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    manifest = load_artifact(default_model_dir())
    assert manifest.quantization is None and manifest.onnxruntime_session_config == {}
    assert json.loads(json.dumps(manifest.to_dict())) == data  # FP32 manifests gain no "quantization": null


def test_the_quantizers_block_is_typed_and_round_trips():
    data = json.loads((default_model_dir() / MANIFEST_NAME).read_text(encoding="utf-8"))
    manifest = Manifest.from_dict({**data, "quantization": copy.deepcopy(OLD_BLOCK)})
    quant = manifest.quantization
    assert isinstance(quant, Quantization) and quant.mode == "int8"
    graph = quant.graphs["transformer"]
    assert isinstance(graph, GraphQuantization) and graph.excluded[0]["module"] == "proj_out"
    assert manifest.onnxruntime_session_config == {"session.disable_quant_qdq": "1"}
    assert manifest.to_dict()["quantization"] == OLD_BLOCK  # the on-disk layout is unchanged


def test_newer_fields_are_ignored_and_bad_blocks_refused():
    data = json.loads((default_model_dir() / MANIFEST_NAME).read_text(encoding="utf-8"))
    later = Manifest.from_dict({**data, "attention": "sdpa", "quantization": {**OLD_BLOCK, "signature": "x"}})
    assert later.quantization.mode == "int8"
    for broken, message in (({**OLD_BLOCK, "mode": "int4"}, "int4"),
                            ({k: v for k, v in OLD_BLOCK.items() if k != "graphs"}, "lacks graphs"),
                            ({**OLD_BLOCK, "graphs": {"transformer": {"quantized": []}}}, "lacks excluded"),
                            ({**OLD_BLOCK, "onnxruntime_session_config": {"k": 1}}, "strings"),
                            ("int8", "not an object")):
        with pytest.raises(ArtifactError, match=message):
            Manifest.from_dict({**data, "quantization": broken})


def test_the_onnxruntime_backend_takes_its_session_config_from_the_manifest(tiny_artifact_dir, tmp_path):
    def qdq_setting(pipeline):
        options = pipeline.backend._sessions["transformer"].get_session_options()
        try:
            return options.get_session_config_entry("session.disable_quant_qdq")
        except Exception:  # onnxruntime raises when the entry was never set
            return None

    assert qdq_setting(load_pipeline(tiny_artifact_dir, "onnxruntime")) is None  # FP32: nothing to set
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact_dir, art)
    manifest = load_artifact(art)
    block = Quantization.from_dict({**OLD_BLOCK, "onnxruntime_session_config": {"session.disable_quant_qdq": "1"}})
    write_manifest(art, dataclasses.replace(manifest, quantization=block))
    assert qdq_setting(load_pipeline(art, "onnxruntime")) == "1"
