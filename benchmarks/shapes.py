"""The DiT widths of a model folder's expert, for the FLOP model: from a diffusers config, or read off an
exported graph's named weights (an artifact keeps no transformer config)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from wanrt.benchmarks.flops import DitShape
from wanrt.benchmarks.settings import model_kind

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def dit_shape(model: Path, expert: str) -> DitShape | None:
    """None where the widths cannot be known (an engines folder, or a graph whose weights lost their names)."""
    kind = model_kind(model)
    if kind == "diffusers":
        return DitShape.from_config(json.loads((Path(model) / expert / "config.json").read_text(encoding="utf-8")))
    if kind == "artifact":
        return _shape_from_onnx(Path(model), expert)
    return None


def _shape_from_onnx(art_dir: Path, expert: str) -> DitShape | None:
    import onnx

    manifest = json.loads((art_dir / "manifest.json").read_text(encoding="utf-8"))
    graph = onnx.load(art_dir / manifest["graphs"][expert]["file"], load_external_data=False).graph
    dims = {init.name.removeprefix("transformer."): tuple(init.dims) for init in graph.initializer}
    layers = {int(m.group(1)) for name in dims if (m := _BLOCK.search(name))}
    try:
        dim, in_channels, *patch = dims["patch_embedding.weight"]
        ffn_dim = dims["blocks.0.ffn.net.0.proj.bias"][0]
        freq_dim = dims["condition_embedder.time_embedder.linear_1.weight"][1]
        out_features = dims["proj_out.bias"][0]
    except (KeyError, ValueError):
        return None
    return DitShape(dim=dim, ffn_dim=ffn_dim, layers=max(layers) + 1, text_dim=int(manifest["spec"]["text_dim"]),
                    in_channels=in_channels, out_channels=out_features // math.prod(patch),
                    patch_size=tuple(patch), freq_dim=freq_dim)
