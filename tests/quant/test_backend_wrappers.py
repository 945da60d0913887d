"""The recording and substituting backends that calibration and the report hand to fresh pipelines, and the
report's measurements run through them: no ModelOpt needed."""

from __future__ import annotations

import numpy as np
import pytest

from wanrt import measures
from wanrt.engine.artifact import load_artifact
from wanrt.engine.graph_forms import onnxruntime_file
from wanrt.engine.loader import load_pipeline
from wanrt.quant import ptq, report
from wanrt.quant.backend_wrappers import RecordingBackend, SubstitutingBackend, with_backend, without_decoder
from wanrt.quant.calibration import calibration_requests

SIZE = {"frames": 5, "height": 32, "width": 32}


@pytest.fixture(scope="module")
def pipeline(tiny_artifact_dir):
    return load_pipeline(tiny_artifact_dir, "onnxruntime")


def _clip(pipeline, request):
    return np.concatenate(list(pipeline.generate(request)))


def test_recording_changes_nothing_and_sees_every_call(pipeline):
    request = calibration_requests(["a ray swims"], steps=4, **SIZE)[0]
    recorder = RecordingBackend(pipeline.backend, keep_outputs=True)
    recorded = with_backend(pipeline, recorder)
    assert recorded.backend is recorder and recorded.spec is pipeline.spec and recorded.limits == pipeline.limits
    assert np.array_equal(_clip(recorded, request), _clip(pipeline, request))
    record = recorder.record
    assert len(record.text_calls) == 1 and record.text_calls[0]["input_ids"].shape[0] == 2  # prompt + negative
    assert [c.timestep for c in record.expert_calls] == [999.0, 900.0, 750.0, 500.0]
    first = record.expert_calls[0]
    again = pipeline.backend.predict_noise(first.expert, first.feeds["hidden_states"], first.feeds["timestep"],
                                           first.feeds["encoder_hidden_states"])
    assert np.array_equal(first.output, again)
    # One copy of the clip's text context, shared by its steps.
    assert len({id(c.feeds["encoder_hidden_states"]) for c in record.expert_calls}) == 1


def test_substituting_routes_only_the_named_networks(pipeline):
    calls = []

    def zero_noise(expert, latents, timestep, text):
        calls.append(expert)
        return np.zeros_like(latents)

    backend = SubstitutingBackend(pipeline.backend, predict_noise=zero_noise)
    request = calibration_requests(["a ray swims"], steps=4, **SIZE)[0]
    clip = _clip(with_backend(pipeline, backend), request)
    assert calls == ["transformer", "transformer", "transformer_2", "transformer_2"]
    assert clip.shape == _clip(pipeline, request).shape  # the real text encoder and decoder still ran
    with pytest.raises(TypeError, match="predict_nosie"):
        SubstitutingBackend(pipeline.backend, predict_nosie=zero_noise)


def test_without_decoder_denoises_and_yields_no_frames(pipeline):
    recorder = RecordingBackend(pipeline.backend)
    request = calibration_requests(["a ray swims"], steps=3, **SIZE)[0]
    chunks = list(with_backend(pipeline, without_decoder(recorder)).generate(request))
    assert len(recorder.record.expert_calls) == 3 and all(c.shape[0] == 0 for c in chunks)


def test_report_of_unchanged_networks_is_exact(pipeline, tiny_artifact_dir):
    """The report's machinery on "quantized" networks that are the FP32 graphs: every error must be zero."""
    # The very graphs the pipeline runs (the onnxruntime attention form where export made one).
    graphs = load_artifact(tiny_artifact_dir).graphs
    served = {name: tiny_artifact_dir / onnxruntime_file(entry) for name, entry in graphs.items()}
    sessions = {e: ptq.session(served[e]) for e in pipeline.spec.experts}
    networks = report.QuantizedNetworks(sessions, ptq.session(served["text_encoder"]))
    requests = calibration_requests(["a ray swims"], steps=4, **SIZE)
    result = report.measure(pipeline, networks, requests, lambda _message: None)
    assert result["end_to_end"]["psnr_db_min"] == measures.PSNR_CAP_DB
    assert all(e["rel_error_max"] == 0.0 for e in result["experts"].values())
    assert result["text_encoder"]["rel_error_mean"] == 0.0
    assert [r["timestep"] for r in result["experts"]["transformer_2"]["timesteps"]] == [750.0, 500.0]
    # A substitute that is not the FP32 network shows up in every number.
    networks.experts = {e: _Scaled(s) for e, s in sessions.items()}
    worse = report.measure(pipeline, networks, requests, lambda _message: None)
    assert worse["end_to_end"]["psnr_db_min"] < measures.PSNR_CAP_DB
    assert all(e["rel_error_mean"] == pytest.approx(0.01, rel=1e-3) for e in worse["experts"].values())
    assert isinstance(pipeline.backend, type(load_pipeline(tiny_artifact_dir, "onnxruntime").backend))


class _Scaled:
    """An onnxruntime session whose output is 1% too large."""

    def __init__(self, session):
        self._session = session

    def run(self, names, feeds):
        return [o * np.float32(1.01) for o in self._session.run(names, feeds)]
