"""The server side of fewer DiT calls: model defaults fill unset fields, `serve --step-cache` is the default a
request may override, and the Result and the audit line report the calls made and saved."""

from __future__ import annotations

import dataclasses

import pytest
from server_testkit import TINY, running_server

from wanrt.server.v1 import wanrt_pb2 as pb

SERVER_BACKENDS = ("onnxruntime",)  # the subject is the server's handling, not the backend


@pytest.fixture(scope="module")
def served(pipeline, tmp_path_factory):
    with running_server(pipeline, tmp_path_factory.mktemp("calls"), step_cache=1.0) as running:
        yield running


def test_calls_are_reported_and_the_server_cache_applies_unless_the_request_says(served):
    request = dataclasses.replace(TINY, frames=5, height=32, width=32, steps=14, guidance=4.0, guidance_2=4.0)
    with served.client() as client:
        cached = client.generate(request)
        plain = client.generate(dataclasses.replace(request, step_cache=0.0))
    assert cached.dit_calls + cached.dit_calls_saved == plain.dit_calls == 2 * 14
    assert plain.dit_calls_saved == 0 and cached.dit_calls_saved > 0
    audit = {r["request_id"]: r for r in served.audit()}
    for result, threshold in ((cached, 1.0), (plain, 0.0)):
        record = audit[result.job_id]
        assert (record["output"]["dit_calls"], record["output"]["dit_calls_saved"]) == (result.dit_calls,
                                                                                      result.dit_calls_saved)
        assert record["params"]["step_cache"] == threshold


def test_unset_fields_take_the_model_defaults_and_a_named_schedule(served, pipeline):
    defaults = pipeline.defaults
    with served.client() as client:
        info = client.describe()
        assert (info.defaults.steps, info.defaults.guidance, info.defaults.schedule, info.defaults.frames) == (
            defaults.steps, defaults.guidance, defaults.schedule, defaults.frames)
        message = pb.GenerateRequest(prompt="a turtle swims", frames=5, height=16, width=16,
                                     schedule="lightning-4step", step_cache=0.0)
        result = client.generate(message)
    # The preset's 4 steps without guidance: 4 DiT calls, where the model's own schedule takes 2 per step.
    assert (result.steps, result.dit_calls, result.schedule) == (4, 4, "lightning-4step")
