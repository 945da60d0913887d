"""Calibration capture, SmoothQuant's equivalence, the report's metrics: no ModelOpt needed."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from wanrt import measures
from wanrt.engine.loader import load_pipeline
from wanrt.quant.backend_wrappers import SubstitutingBackend, with_backend
from wanrt.quant.calibration import calibration_requests, capture
from wanrt.quant.placement import EXPERT_RULES, plan
from wanrt.quant.prompts import CALIBRATION_PROMPTS, REPORT_PROMPTS, prompts_sha256, read_prompt_file
from wanrt.quant.smooth import smooth

SIZE = {"frames": 5, "height": 32, "width": 32}


def _refuse(*_args):
    raise AssertionError("calibration must not run the VAE decoder")


def test_capture_records_what_each_expert_receives(tiny_artifact_dir):
    pipeline = load_pipeline(tiny_artifact_dir, "onnxruntime")
    backend = pipeline.backend
    requests = calibration_requests(["a ray swims", "bubbles rise"], steps=4, **SIZE)
    no_decoder = with_backend(pipeline, SubstitutingBackend(backend, decode_first=_refuse, decode_next=_refuse))
    record = capture(no_decoder, requests)
    boundary = pipeline.spec.boundary_timestep
    assert [c.expert for c in record.expert_calls] == ["transformer"] * 2 + ["transformer_2"] * 2 + \
        ["transformer"] * 2 + ["transformer_2"] * 2
    for call in record.expert_calls:
        assert (call.timestep >= boundary) == (call.expert == "transformer")
        feeds = call.feeds
        # cond and uncond in one batch, as served: same latents, two different contexts.
        assert feeds["hidden_states"].shape == (2, 16, 2, 4, 4)
        assert np.array_equal(feeds["hidden_states"][0], feeds["hidden_states"][1])
        assert not np.array_equal(feeds["encoder_hidden_states"][0], feeds["encoder_hidden_states"][1])
        assert np.all(feeds["timestep"] == call.timestep)
    assert len(record.text_calls) == 2 and record.text_calls[0]["input_ids"].shape[0] == 2
    # Nothing was patched: the pipelines keep their backends, the backend its class's methods.
    assert pipeline.backend is backend and not {"predict_noise", "encode_text"} & set(vars(backend))
    assert no_decoder.backend.predict_noise.__self__ is no_decoder.backend


def test_smoothing_keeps_the_function(tiny_artifact_dir):
    path = tiny_artifact_dir / "transformer.onnx"
    model = onnx.load(path)
    names = plan(model, EXPERT_RULES).quantize
    rng = np.random.default_rng(0)
    feeds = [{"hidden_states": rng.standard_normal((2, 16, 2, 4, 4), dtype=np.float32),
              "timestep": np.full(2, 950.0, np.float32),
              "encoder_hidden_states": rng.standard_normal((2, 512, 32), dtype=np.float32)} for _ in range(2)]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    before = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    expected = before.run(None, feeds[0])[0]
    smoothed = smooth(model, names, feeds, alpha=0.5)
    # Per block: attn1 q/k/v (one shared input), attn1 out, attn2 q, attn2 out, ffn in, ffn out; attn2 k/v of
    # both blocks read the same text embedding: one more group.
    assert len(smoothed) == 2 * 6 + 1
    onnx.checker.check_model(model)
    after = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert measures.norm_relative_error(after.run(None, feeds[0])[0], expected) < 1e-5


def test_metrics():
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    noisy = np.clip(clip.astype(int) + rng.integers(-8, 9, clip.shape), 0, 255).astype(np.uint8)
    assert measures.psnr(clip, clip) == measures.PSNR_CAP_DB and measures.ssim(clip, clip) == pytest.approx(1.0)
    assert 30 < measures.psnr(noisy, clip) < 40 and 0.5 < measures.ssim(noisy, clip) < 1.0
    a = rng.standard_normal(100)
    assert measures.cosine(a, a) == pytest.approx(1.0) and measures.norm_relative_error(a, a) == 0.0


def test_prompt_sets(tmp_path):
    assert len(CALIBRATION_PROMPTS) >= 16 and not set(CALIBRATION_PROMPTS) & set(REPORT_PROMPTS)
    path = tmp_path / "p.txt"
    path.write_text("# comment\n\nfirst prompt\n  second prompt  \n", encoding="utf-8")
    assert read_prompt_file(path) == ("first prompt", "second prompt")
    assert prompts_sha256(["a", "b"]) != prompts_sha256(["a b"])
