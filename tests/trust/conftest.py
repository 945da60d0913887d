"""Trust tests: a signing key pair, and signed copies of the tiny artifact and of a stand-in engines folder."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "trt"))  # trt_testkit: engines.json as build_engines writes it


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from wanrt.trust.keys import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys") / "signing.key")


@pytest.fixture(scope="session")
def other_key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from wanrt.trust.keys import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys2") / "other.key")


@pytest.fixture
def signed_artifact(tiny_artifact_dir: Path, tmp_path: Path, key_pair: tuple[Path, Path]) -> Path:
    from wanrt.trust.folders import sign_folder
    from wanrt.trust.keys import load_signer

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact_dir, art)
    sign_folder(art, load_signer(key_pair[0]), wanrt_version="test")
    return art


@pytest.fixture
def signed_engines(signed_artifact: Path, tmp_path: Path, key_pair: tuple[Path, Path]) -> Path:
    from trt_testkit import MAX_FRAMES, MAX_HEIGHT, MAX_WIDTH, write_standin_engines

    from wanrt.engine.artifact import load_artifact
    from wanrt.engine.tensorrt.profiles import serving_limits
    from wanrt.trust.folders import sign_folder
    from wanrt.trust.keys import load_signer

    artifact = load_artifact(signed_artifact)
    limits = serving_limits(artifact.spec, max_frames=MAX_FRAMES, max_height=MAX_HEIGHT, max_width=MAX_WIDTH)
    engines = tmp_path / "engines"
    write_standin_engines(engines, signed_artifact, artifact, limits)
    sign_folder(engines, load_signer(key_pair[0]), wanrt_version="test")
    return engines


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Changes one bit of one byte (the middle one unless told): the smallest tampering there is."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))
