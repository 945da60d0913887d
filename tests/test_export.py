"""`export_pipeline` and the artifact format: content, external data, atomic publication, tamper detection.

The two full exports (two experts with every weight in external data, one expert inline) are conftest's
session fixtures, shared with the backend parity tests; everything else here fails before or early in export.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from wanrt.engine.artifact import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Manifest,
    hash_folder,
    load_artifact,
    sha256_file,
)
from wanrt.engine.spec import ModelSpec, spec_from_diffusers
from wanrt.errors import ArtifactError, ExportVerificationError, InvalidRequestError, ModelFormatError
from wanrt.export import onnx_io
from wanrt.export.exporter import export_pipeline

pytestmark = pytest.mark.slow

TWO_EXPERT_GRAPHS = {"text_encoder", "transformer", "transformer_2", "vae_decoder_init", "vae_decoder_step"}


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_external_data_is_listed_and_loadable(tiny_artifact_dir):
    manifest = load_artifact(tiny_artifact_dir)
    assert set(manifest.graphs) == TWO_EXPERT_GRAPHS
    for name, graph in manifest.graphs.items():
        data = graph["file"] + ".data"
        assert (tiny_artifact_dir / data).is_file(), f"{name}: threshold 0 must move weights to {data}"
        assert data in manifest.files
        session = _session(tiny_artifact_dir / graph["file"])
        assert [i.name for i in session.get_inputs()] == graph["inputs"]
        assert [o.name for o in session.get_outputs()] == graph["outputs"]
    # The dynamic text length really is dynamic: the serving length, not the export example's.
    ids = np.zeros((2, manifest.spec.text_length), np.int64)
    hidden = _session(tiny_artifact_dir / "text_encoder.onnx").run(None, {"input_ids": ids, "attention_mask": ids + 1})
    assert hidden[0].shape == (2, manifest.spec.text_length, manifest.spec.text_dim)


def test_manifest_content(tiny_artifact_dir, tiny_model_dir):
    manifest = load_artifact(tiny_artifact_dir)
    raw = json.loads((tiny_artifact_dir / MANIFEST_NAME).read_text())
    assert Manifest.from_dict(raw) == manifest
    assert manifest.format_version == FORMAT_VERSION and manifest.opset == onnx_io.OPSET

    # Every file but the manifest is listed with its hash.
    assert manifest.files == hash_folder(tiny_artifact_dir)
    assert {"tokenizer.json", "scheduler_config.json"} <= set(manifest.files)
    source_tokenizer = tiny_model_dir / "tokenizer" / "tokenizer.json"
    assert (tiny_artifact_dir / "tokenizer.json").read_bytes() == source_tokenizer.read_bytes()
    assert json.loads((tiny_artifact_dir / "scheduler_config.json").read_text()) == manifest.spec.scheduler_config

    spec = manifest.spec
    assert spec == spec_from_diffusers(tiny_model_dir) == ModelSpec.from_dict(raw["spec"])
    assert spec.experts == ("transformer", "transformer_2")
    assert spec.boundary_ratio == 0.875
    assert (spec.vae_scale_temporal, spec.vae_scale_spatial, spec.text_length) == (4, 8, 512)
    assert manifest.vae_decoder["temporal_stride"] == 4 and manifest.vae_decoder["spatial_scale"] == 8

    assert manifest.source_model["path"] == str(tiny_model_dir.resolve())
    index_sha = sha256_file(tiny_model_dir / "model_index.json")
    assert manifest.source_model["config_sha256"]["model_index.json"] == index_sha
    assert {"torch", "diffusers", "transformers", "onnx", "onnxscript", "wanrt"} <= set(manifest.versions)
    assert manifest.graphs["transformer"]["shape_ranges"]["hidden_states"] == {
        "min": [1, 16, 1, 2, 2], "max": [2, 16, 32, 64, 64]}  # rope_max_seq_len=32 patches per axis

    for graph in manifest.graphs.values():
        checks = [p for p in manifest.parity if p["graph"] == graph["file"]]
        assert len({json.dumps(p["shapes"]) for p in checks}) >= 2, f"{graph['file']}: parity at < 2 shapes"
        assert all(0.0 <= p["max_rel_error"] <= 1e-4 for p in checks)


def test_single_expert_export(single_expert_artifact_dir):
    manifest = load_artifact(single_expert_artifact_dir)
    assert manifest.spec.experts == ("transformer",) and manifest.spec.boundary_ratio is None
    assert set(manifest.graphs) == TWO_EXPERT_GRAPHS - {"transformer_2"}
    assert not any(f.startswith("transformer_2") for f in manifest.files)
    # Tiny weights stay inside the graphs under the default (2 GB) threshold.
    assert not any(f.endswith(".onnx.data") for f in manifest.files)
    assert any(p["graph"] == "transformer.onnx" for p in manifest.parity)


def test_graphs_carry_no_exporter_trace(single_expert_artifact_dir):
    """Stack traces name the exporting machine's paths: an artifact keeps only the module scopes quant needs."""
    import onnx

    for name in ("transformer.onnx", "text_encoder.onnx", "vae_decoder_step.onnx"):
        model = onnx.load(single_expert_artifact_dir / name, load_external_data=False)
        kept = {p.key for n in model.graph.node for p in n.metadata_props}
        assert kept == {onnx_io.SCOPE_METADATA_KEY}, f"{name}: exporter metadata kept: {sorted(kept)}"
        assert not any(n.doc_string for n in model.graph.node)


@pytest.mark.parametrize("index", [None, {"_class_name": "StableDiffusionPipeline"}], ids=["no-index", "not-wan"])
def test_not_a_wan_pipeline_writes_nothing(tmp_path, index):
    model = tmp_path / "model"
    model.mkdir()
    if index is not None:
        (model / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFormatError):
        export_pipeline(model, tmp_path / "arts" / "out")
    assert not (tmp_path / "arts").exists()


def test_non_empty_out_dir_is_refused(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InvalidRequestError, match="not empty"):
        export_pipeline(tiny_model_dir, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_parity_failure_leaves_nothing(tmp_path, single_expert_model_dir, monkeypatch):
    seen: list[list[str]] = []
    real = onnx_io.compare

    def strict(path, feeds, expected, **kwargs):
        seen.append(sorted(p.name for p in Path(path).parent.iterdir()))
        return real(path, feeds, expected, **{**kwargs, "tolerance": -1.0})  # no error can be <= -1

    monkeypatch.setattr(onnx_io, "compare", strict)
    parent = tmp_path / "arts"
    with pytest.raises(ExportVerificationError, match="text_encoder.onnx"):
        export_pipeline(single_expert_model_dir, parent / "out")
    assert "text_encoder.onnx" in seen[0]  # the failure came after real files were written...
    assert list(parent.iterdir()) == []  # ...and neither they, the partial folder nor out_dir remain


@pytest.fixture
def artifact_copy(tiny_artifact_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_artifact_dir, tmp_path / "art"))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tampered_file_is_named(artifact_copy):
    _flip_last_byte(artifact_copy / "transformer_2.onnx.data")
    with pytest.raises(ArtifactError, match=r"transformer_2\.onnx\.data does not match"):
        load_artifact(artifact_copy)
    load_artifact(artifact_copy, verify_hashes=False)  # content is only checked when asked


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda art: (art / MANIFEST_NAME).unlink(), "no manifest.json"),
        (lambda art: (art / "vae_decoder_step.onnx.data").unlink(), r"vae_decoder_step\.onnx\.data is listed.*missing"),
        (lambda art: (art / "extra.onnx").write_bytes(b"x"), r"extra\.onnx is not listed"),
        (lambda art: _edit_manifest(art, format_version=99), "format_version 99"),
        (lambda art: _edit_manifest(art, files={"../escape": "0" * 64}), "invalid path '../escape'"),
        (lambda art: _edit_manifest(art, graphs={"transformer": {}}), 'every graph needs a "file"'),
    ],
    ids=["no-manifest", "missing-file", "unlisted-onnx", "format-version", "path-escape", "graph-without-file"],
)
def test_damaged_artifact_is_refused(artifact_copy, damage, message):
    damage(artifact_copy)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(artifact_copy, verify_hashes=False)


def _edit_manifest(art: Path, **changes: object) -> None:
    path = art / MANIFEST_NAME
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_slow_tokenizer_is_converted(tmp_path):
    """Without tokenizer.json, export writes one from the sentencepiece model that tokenises identically."""
    import sentencepiece as spm
    from tiny_wan import VOCAB_WORDS

    from wanrt.engine.text import PromptTokenizer
    from wanrt.export.exporter import _write_tokenizer

    folder = tmp_path / "tokenizer"
    folder.mkdir()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(VOCAB_WORDS)] * 20), model_prefix=str(folder / "spiece"), vocab_size=60,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
         "extra_ids": 0}))
    _write_tokenizer(folder, tmp_path / "tokenizer.json", 64)
    prompt = "a school of glowing jellyfish"
    ids, _ = PromptTokenizer(tmp_path / "tokenizer.json", 64)([prompt])
    pieces = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model")).encode(prompt)
    assert ids[0].tolist() == pieces + [1] + [0] * (63 - len(pieces))  # then </s>, then <pad> to 64
