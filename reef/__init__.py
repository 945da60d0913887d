"""The embedded "reef" model: a procedural underwater world, the small Wan2.2-shaped model trained on it, and
the exported artifact shipped in ``model/`` so that `wanrt generate` works out of the box on a CPU."""

from __future__ import annotations

from pathlib import Path

# Settings the shipped model was trained for; they make a clip in a few seconds on two CPU cores.
DEFAULT_FRAMES = 17
DEFAULT_SIZE = 96


def default_model_dir() -> Path:
    """The packaged artifact folder (onnxruntime backend)."""
    return Path(__file__).with_name("model")
