"""Session-wide tiny models: built once, exported once, shared by every test module that needs them."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
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


# Every test model shares tiny_wan.build_vae()'s VAE, and its export is the slowest part of an export (about half
# of it): the first export of a session exports it for real, later exports of the same VAE weights at the same
# settings copy those files and that manifest entry (export is deterministic, byte for byte).
_VAE_EXPORTS: dict[tuple, tuple[Path, dict]] = {}


def _export(model_dir: Path, out: Path, **kwargs: object) -> Path:
    import copy
    from unittest import mock

    from wanrt.engine.artifact import sha256_file
    from wanrt.export import exporter

    real = exporter._export_vae

    def export_vae_once(source: Path, art_dir: Path, threshold: int, dtype: str) -> dict:
        vae = Path(source) / "vae"
        key = (*(sha256_file(p) for p in sorted(vae.iterdir())), threshold, dtype)
        if key not in _VAE_EXPORTS:
            before = set(art_dir.iterdir())
            result = real(source, art_dir, threshold, dtype)
            keep = Path(tempfile.mkdtemp(prefix="wanrt-test-vae-"))
            atexit.register(shutil.rmtree, keep, True)
            for path in set(art_dir.iterdir()) - before:
                shutil.copy2(path, keep / path.name)
            _VAE_EXPORTS[key] = (keep, copy.deepcopy(result))
            return result
        keep, result = _VAE_EXPORTS[key]
        for path in keep.iterdir():
            shutil.copy2(path, art_dir / path.name)
        return copy.deepcopy(result)

    with mock.patch.object(exporter, "_export_vae", export_vae_once):
        exporter.export_pipeline(model_dir, out, **kwargs)
    return out


@pytest.fixture(scope="session")
def tiny_artifact_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-expert model exported with every weight in external data (exercises the >2 GB path)."""
    return _export(tiny_model_dir, tmp_path_factory.mktemp("art") / "wan22-tiny-onnx", external_data_threshold=0)


@pytest.fixture(scope="session")
def single_expert_artifact_dir(single_expert_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(single_expert_model_dir, tmp_path_factory.mktemp("art1") / "wan-tiny-single-onnx")


# Models the project has never seen (tests/drawn_models.py): drawn once per session from WANRT_TEST_SEED (printed
# in the header; a fresh seed when unset), built and exported at most once each, whichever tests ask.
from drawn_models import COUNT_ENV, SEED_ENV, DrawnWan, draw_many, session_seed  # noqa: E402

DRAWN_SEED = session_seed()
DRAWN = draw_many(DRAWN_SEED)


def _drawn_line() -> str:
    return (f"drawn Wan models: {SEED_ENV}={DRAWN_SEED} ({COUNT_ENV}={len(DRAWN)}: "
            f"{', '.join(w.id for w in DRAWN)}); replay a failure with {SEED_ENV}={DRAWN_SEED}, or one model "
            f"alone with {SEED_ENV}=<its s-number> {COUNT_ENV}=1")


def pytest_report_header(config: pytest.Config) -> str:
    return _drawn_line()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Also under -q, which hides the header (scripts/test.sh runs pytest -q), when drawn models were used.
    if _DRAWN_USED:
        terminalreporter.write_line(_drawn_line())


_DRAWN_USED: list[str] = []  # test functions that take a drawn model


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "drawn_wan" in metafunc.fixturenames:
        _DRAWN_USED.append(metafunc.function.__name__)
        metafunc.parametrize("drawn_wan", DRAWN, ids=[w.id for w in DRAWN], scope="session")


class _DrawnModels:
    """Session cache: each drawn model's diffusers folder and its export, made on first use."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self._factory = factory
        self._models: dict[DrawnWan, Path] = {}
        self._artifacts: dict[DrawnWan, Path] = {}

    def model_dir(self, wan: DrawnWan) -> Path:
        if wan not in self._models:
            self._models[wan] = wan.build(self._factory.mktemp(f"drawn-{wan.seed}") / wan.id)
        return self._models[wan]

    def artifact_dir(self, wan: DrawnWan) -> Path:
        if wan not in self._artifacts:
            self._artifacts[wan] = _export(self.model_dir(wan), self._factory.mktemp(f"drawn-art-{wan.seed}") / "onnx")
        return self._artifacts[wan]


@pytest.fixture(scope="session")
def drawn_models(tmp_path_factory: pytest.TempPathFactory) -> _DrawnModels:
    return _DrawnModels(tmp_path_factory)


@pytest.fixture
def drawn_model_dir(drawn_wan: DrawnWan, drawn_models: _DrawnModels) -> Path:
    """The drawn model's diffusers WanPipeline folder (random weights, written with save_pretrained)."""
    return drawn_models.model_dir(drawn_wan)


@pytest.fixture
def drawn_artifact_dir(drawn_wan: DrawnWan, drawn_models: _DrawnModels) -> Path:
    """The drawn model exported by `wanrt export` (fp32, every graph parity-checked; weights inline)."""
    return drawn_models.artifact_dir(drawn_wan)
