"""Fixtures for the server tests: the tiny Wan2.2 pipeline (torch backend, loaded once) and test certificates."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_testkit import Certs, make_certs


@pytest.fixture(scope="session")
def pipeline(tiny_model_dir: Path) -> object:
    from wanrt.engine.loader import load_pipeline

    return load_pipeline(tiny_model_dir, "torch")


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))
