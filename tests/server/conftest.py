"""Fixtures for the server tests: the tiny Wan2.2 pipeline on each backend, and test certificates.

Every server test that takes ``pipeline`` runs on the onnxruntime backend (what production serving runs, on the
exported tiny artifact) and on the torch backend (the reference, on the diffusers folder). A test module can
narrow that with ``SERVER_BACKENDS = ("onnxruntime",)`` (the soak and the fuzzing: their subject is the server,
and one backend is enough to show it).
"""

from __future__ import annotations

import pytest
from server_testkit import Certs, make_certs

SERVER_BACKENDS = ("onnxruntime", "torch")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pipeline" in metafunc.fixturenames:
        backends = getattr(metafunc.module, "SERVER_BACKENDS", SERVER_BACKENDS)
        metafunc.parametrize("pipeline", backends, indirect=True, scope="session")


@pytest.fixture(scope="session")
def pipeline(request: pytest.FixtureRequest) -> object:
    """The tiny model loaded once per backend (``request.param``)."""
    from wanrt.engine.loader import load_pipeline

    if request.param == "onnxruntime":
        return load_pipeline(request.getfixturevalue("tiny_artifact_dir"), "onnxruntime")
    return load_pipeline(request.getfixturevalue("tiny_model_dir"), "torch")


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))
