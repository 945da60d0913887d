"""What the pipeline must know about a Wan model, read from a diffusers folder's JSON configs (no torch).

The same facts travel in an exported artifact's manifest, so the pipeline treats both sources alike.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from wanrt.errors import ModelFormatError

EXPERT_NAMES = ("transformer", "transformer_2")
# Wan's text encoder context: prompts are padded/trimmed to this many tokens (WanPipeline's default).
WAN_TEXT_LENGTH = 512


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Architecture facts the pipeline needs, independent of where the weights live."""

    experts: tuple[str, ...]
    boundary_ratio: float | None
    scheduler_config: dict[str, Any]
    latent_channels: int
    patch_size: tuple[int, int, int]
    vae_scale_temporal: int
    vae_scale_spatial: int
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]
    text_length: int
    text_dim: int

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def boundary_timestep(self) -> float | None:
        """Timesteps at or above this go to the high-noise expert (``transformer``); below, to ``transformer_2``."""
        if self.boundary_ratio is None:
            return None
        return self.boundary_ratio * self.num_train_timesteps

    def expert_for(self, timestep: float) -> str:
        """The expert that denoises at ``timestep``: the high-noise one at or above the boundary."""
        boundary = self.boundary_timestep
        return self.experts[0] if boundary is None or timestep >= boundary else self.experts[-1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        try:
            values = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        except KeyError as missing:
            raise ModelFormatError(f"model spec lacks {missing.args[0]!r}") from None
        for name in ("experts", "patch_size", "latents_mean", "latents_std"):
            values[name] = tuple(values[name])
        return cls(**values)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFormatError(f"{path} is missing: not a diffusers Wan pipeline folder") from None
    except json.JSONDecodeError as err:
        raise ModelFormatError(f"{path} is not valid JSON: {err}") from None


def spec_from_diffusers(model_dir: Path) -> ModelSpec:
    """Reads and checks a diffusers WanPipeline folder's configs; refuses anything that is not Wan T2V."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFormatError(f"{model_dir} is not a directory")
    index = _read_json(model_dir / "model_index.json")
    if index.get("_class_name") != "WanPipeline":
        raise ModelFormatError(
            f"{model_dir}/model_index.json names {index.get('_class_name')!r}; only WanPipeline (text-to-video) "
            "folders are supported"
        )
    if index.get("expand_timesteps"):
        raise ModelFormatError("expand_timesteps=true (Wan2.2 TI2V) is not supported")
    experts = tuple(n for n in EXPERT_NAMES if _component_present(index, n))
    if not experts:
        raise ModelFormatError(f"{model_dir} has neither 'transformer' nor 'transformer_2'")
    boundary_ratio = index.get("boundary_ratio")
    if len(experts) == 2 and boundary_ratio is None:
        raise ModelFormatError("two experts but no boundary_ratio in model_index.json")
    if boundary_ratio is not None and not 0.0 < float(boundary_ratio) < 1.0:
        raise ModelFormatError(f"boundary_ratio must lie in (0, 1), got {boundary_ratio}")
    for part in ("text_encoder", "tokenizer", "vae", "scheduler"):
        if not _component_present(index, part):
            raise ModelFormatError(f"{model_dir}/model_index.json has no {part!r} component")
    transformer = _read_json(model_dir / experts[0] / "config.json")
    vae = _read_json(model_dir / "vae" / "config.json")
    if vae.get("_class_name") != "AutoencoderKLWan":
        raise ModelFormatError(f"vae is {vae.get('_class_name')!r}, expected AutoencoderKLWan")
    if vae.get("patch_size") is not None or vae.get("is_residual"):
        raise ModelFormatError("the Wan2.2 TI2V VAE (patch_size / is_residual) is not supported")
    z_dim = int(vae.get("z_dim", 16))
    temporal_downsample = vae.get("temperal_downsample", [False, True, True])
    return ModelSpec(
        experts=experts,
        boundary_ratio=float(boundary_ratio) if len(experts) == 2 else None,
        scheduler_config=_read_json(model_dir / "scheduler" / "scheduler_config.json"),
        latent_channels=int(transformer.get("in_channels", 16)),
        patch_size=tuple(transformer.get("patch_size", (1, 2, 2))),
        vae_scale_temporal=int(vae.get("scale_factor_temporal", 2 ** sum(map(bool, temporal_downsample)))),
        vae_scale_spatial=int(vae.get("scale_factor_spatial", 2 ** len(temporal_downsample))),
        latents_mean=tuple(float(v) for v in vae["latents_mean"][:z_dim]),
        latents_std=tuple(float(v) for v in vae["latents_std"][:z_dim]),
        text_length=WAN_TEXT_LENGTH,
        text_dim=int(transformer.get("text_dim", 4096)),
    )


def _component_present(index: dict[str, Any], name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None
