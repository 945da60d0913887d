"""Shared fixtures for the TensorRT tests: the real tiny artifact's manifest and small serving limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from trt_testkit import MAX_FRAMES, MAX_HEIGHT, MAX_WIDTH

from wanrt.engine.artifact import Manifest, load_artifact
from wanrt.engine.request import Limits
from wanrt.engine.tensorrt.profiles import serving_limits


@pytest.fixture(scope="session")
def artifact(tiny_artifact_dir: Path) -> Manifest:
    return load_artifact(tiny_artifact_dir)


@pytest.fixture(scope="session")
def limits(artifact: Manifest) -> Limits:
    return serving_limits(artifact.spec, max_frames=MAX_FRAMES, max_height=MAX_HEIGHT, max_width=MAX_WIDTH)
