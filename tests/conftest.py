"""Session-wide tiny models: built once, exported once, shared by every test module that needs them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def wanrt_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """wanrt's per-installation state (secrets, the provenance certificate) in a folder of the test session,
    not the user's ~/.local/state: every process the tests start inherits it."""
    path = tmp_path_factory.mktemp("state") / "wanrt"
    os.environ["WANRT_STATE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-expert (Wan2.2 A14B layout) diffusers folder with random weights."""
    from tiny_wan import build_pipeline

    return build_pipeline(tmp_path_factory.mktemp("tiny") / "wan22-tiny", two_experts=True)


@pytest.fixture(scope="session")
def single_expert_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_wan import build_pipeline

    return build_pipeline(tmp_path_factory.mktemp("tiny1") / "wan-tiny-single", two_experts=False)


def _export(model_dir: Path, out: Path, **kwargs: object) -> Path:
    from wanrt.export.exporter import export_pipeline

    export_pipeline(model_dir, out, **kwargs)
    return out


@pytest.fixture(scope="session")
def tiny_artifact_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-expert model exported with every weight in external data (exercises the >2 GB path)."""
    return _export(tiny_model_dir, tmp_path_factory.mktemp("art") / "wan22-tiny-onnx", external_data_threshold=0)


@pytest.fixture(scope="session")
def single_expert_artifact_dir(single_expert_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(single_expert_model_dir, tmp_path_factory.mktemp("art1") / "wan-tiny-single-onnx")
