"""Optimisation profiles: the min/opt/max shape of every input of every graph, from the serving limits.

A TensorRT engine built for dynamic shapes only runs shapes inside its profile, and picks its kernels for the
profile's "opt" shape. The profiles here are exactly the envelope of the calls the pipeline makes for requests
valid under a ``Limits`` (no wider: a wider profile costs speed and activation memory), checked against what
the exported graphs accept (the manifest's ``shape_ranges``; for the VAE graphs, its ``vae_decoder`` block).

Pure Python: no TensorRT needed to compute, serialise or check a profile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from wanrt.engine.artifact import Manifest
from wanrt.engine.request import Limits
from wanrt.engine.shapes import latent_shape, video_frames
from wanrt.engine.spec import ModelSpec
from wanrt.errors import ArtifactError, InvalidRequestError

Shape = tuple[int, ...]

# The pipeline batches the conditional and unconditional prediction (and prompt + negative prompt) together
# when guidance is on, and sends batch 1 when it is off; the streaming VAE decoder always gets batch 1.
CFG_BATCH = (1, 2)
VAE_BATCH = 1
TEXT_ENCODER = "text_encoder"
VAE_INIT = "vae_decoder_init"
VAE_STEP = "vae_decoder_step"

# What each dimension of each input means, for error messages that say more than "dim 3".
_LATENT_DIMS = ("batch", "latent channels", "latent frames", "latent height", "latent width")
_CACHE_DIMS = ("batch", "cache channels", "cache frames", "cache height", "cache width")
_DIM_LABELS: dict[str, tuple[str, ...]] = {
    "input_ids": ("batch", "text length"),
    "attention_mask": ("batch", "text length"),
    "hidden_states": _LATENT_DIMS,
    "timestep": ("batch",),
    "encoder_hidden_states": ("batch", "text length", "text dim"),
    "latent": _LATENT_DIMS,
    "frames": ("batch", "video channels", "video frames", "video height", "video width"),
    "noise_pred": _LATENT_DIMS,
    "last_hidden_state": ("batch", "text length", "text dim"),
}
# The shape limits a profile is computed from; engines.json records them so the loader can serve exactly them.
LIMIT_FIELDS = ("max_frames", "min_size", "max_height", "max_width", "frame_multiple", "size_multiple")


def dim_label(tensor: str, dim: int) -> str:
    """A readable name for ``tensor``'s dimension ``dim`` ("latent height"), or "dim N" when unknown."""
    labels = _CACHE_DIMS if tensor.startswith("cache_") else _DIM_LABELS.get(tensor, ())
    return labels[dim] if dim < len(labels) else f"dim {dim}"


@dataclasses.dataclass(frozen=True)
class VideoShape:
    """A request's video size: the "opt" point of the profiles (TensorRT tunes its kernels for it)."""

    frames: int
    height: int
    width: int


@dataclasses.dataclass(frozen=True)
class InputProfile:
    """One input's shape range, as TensorRT's IOptimizationProfile.set_shape takes it."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(f"min/opt/max ranks differ: {self.min}, {self.opt}, {self.max}")
        if not all(0 < lo <= op <= hi for lo, op, hi in zip(self.min, self.opt, self.max, strict=True)):
            raise ValueError(f"need 0 < min <= opt <= max in every dim: {self.min}, {self.opt}, {self.max}")

    def first_outside(self, shape: Sequence[int]) -> int | None:
        """Index of the first dim of ``shape`` outside [min, max], None when all fit (ranks must match)."""
        for d, (lo, value, hi) in enumerate(zip(self.min, shape, self.max, strict=True)):
            if not lo <= value <= hi:
                return d
        return None

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclasses.dataclass(frozen=True)
class GraphProfile:
    """One optimisation profile of one graph: every input, in the graph's input order."""

    inputs: dict[str, InputProfile]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": {name: p.to_dict() for name, p in self.inputs.items()}}

    @classmethod
    def from_dict(cls, data: Any, where: str = "profile") -> GraphProfile:
        """Parses ``to_dict``'s output; ArtifactError (naming ``where``) when it is malformed."""
        try:
            inputs = {str(name): InputProfile(*(tuple(int(v) for v in p[k]) for k in ("min", "opt", "max")))
                      for name, p in data["inputs"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ArtifactError(f"{where} is malformed: {err!r}") from None
        return cls(inputs)


@dataclasses.dataclass(frozen=True)
class _LatentRange:
    """Latent (frames, height, width) at the profile's min, opt and max."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]


def serving_limits(spec: ModelSpec, *, max_frames: int, max_height: int, max_width: int,
                   min_size: int = Limits.min_size) -> Limits:
    """The pipeline's Limits for engines built to these maxima (multiples as VideoPipeline derives them)."""
    return Limits(max_frames=max_frames, min_size=min_size, max_height=max_height, max_width=max_width,
                  frame_multiple=spec.vae_scale_temporal, size_multiple=spec.vae_scale_spatial * spec.patch_size[1])


def limits_to_dict(limits: Limits) -> dict[str, int]:
    return {name: int(getattr(limits, name)) for name in LIMIT_FIELDS}


def limits_from_dict(data: Any, where: str = "limits") -> Limits:
    try:
        return Limits(**{name: int(data[name]) for name in LIMIT_FIELDS})
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{where} is malformed: {err!r}") from None


def compute_profiles(manifest: Manifest, limits: Limits, opt: VideoShape | None = None) -> dict[str, GraphProfile]:
    """One profile per graph of ``manifest`` covering every call the pipeline makes for requests valid under
    ``limits``; ``opt`` (default: the largest request) is where TensorRT tunes.

    Raises InvalidRequestError naming the limit (``max_height``, ``opt_frames``, ...) that is malformed or that
    the exported graphs cannot serve, and ArtifactError when the artifact itself lacks what the pipeline needs
    (batch 2, the text length, an input wanrt does not drive).
    """
    spec = manifest.spec
    latent = _latent_range(spec, limits, opt)
    profiles: dict[str, GraphProfile] = {}
    for name, graph in manifest.graphs.items():
        if name == TEXT_ENCODER:
            profile = _text_encoder_profile(spec)
        elif name in spec.experts:
            profile = _expert_profile(spec, latent)
        elif name in (VAE_INIT, VAE_STEP):
            profile = _vae_profile(manifest.vae_decoder, latent, with_caches=name == VAE_STEP)
        else:
            raise ArtifactError(f"graph {name!r} is not one the tensorrt backend runs")
        _check_against_graph(name, graph, profile, _accepted_ranges(manifest, name, graph), spec, limits)
        profiles[name] = profile
    missing = {TEXT_ENCODER, VAE_INIT, VAE_STEP, *spec.experts} - profiles.keys()
    if missing:
        raise ArtifactError(f"the artifact has no {', '.join(sorted(missing))} graph")
    return profiles


def _valid_values(low: int, high: int, multiple: int, offset: int) -> tuple[int, int] | None:
    """Smallest and largest value = offset + k * multiple (k >= 0) in [low, high], or None if there is none."""
    first = offset + max(0, -(-(low - offset) // multiple)) * multiple
    last = offset + ((high - offset) // multiple) * multiple if high >= offset else offset - 1
    return (first, last) if first <= last else None


def _latent_range(spec: ModelSpec, limits: Limits, opt: VideoShape | None) -> _LatentRange:
    t, s = spec.vae_scale_temporal, spec.vae_scale_spatial
    frames = _require_valid("max_frames", limits.max_frames, 1, limits.frame_multiple, 1,
                            f"{limits.frame_multiple}k+1")
    sizes = {}
    for field in ("max_height", "max_width"):
        sizes[field] = _require_valid(field, getattr(limits, field), limits.min_size, limits.size_multiple, 0,
                                      f"a multiple of {limits.size_multiple} and at least min_size {limits.min_size}")
    if limits.min_size < 1:
        raise InvalidRequestError("min_size", f"must be positive, got {limits.min_size}")
    low = (frames[0], sizes["max_height"][0], sizes["max_width"][0])
    high = (frames[1], sizes["max_height"][1], sizes["max_width"][1])
    point = high if opt is None else (opt.frames, opt.height, opt.width)
    for field, value, lo, hi, multiple, offset in zip(
        ("opt_frames", "opt_height", "opt_width"), point, low, high,
        (limits.frame_multiple, limits.size_multiple, limits.size_multiple), (1, 0, 0), strict=True,
    ):
        if not lo <= value <= hi or (value - offset) % multiple:
            raise InvalidRequestError(field, f"must be a valid request size between {lo} and {hi}, got {value}")

    def to_latent(video: tuple[int, int, int]) -> tuple[int, int, int]:
        # The requests' own arithmetic, so the profile holds exactly what requests ask for.
        return latent_shape(*video, temporal=t, spatial=s)[2:]

    return _LatentRange(to_latent(low), to_latent(point), to_latent(high))


def _require_valid(field: str, value: int, low: int, multiple: int, offset: int, rule: str) -> tuple[int, int]:
    valid = _valid_values(low, value, multiple, offset)
    if valid is None or valid[1] != value:
        raise InvalidRequestError(field, f"must be {rule}, got {value}")
    return valid


def _text_encoder_profile(spec: ModelSpec) -> GraphProfile:
    # The tokenizer always pads to text_length, so the length is fixed: a static dim gives TensorRT the best kernels.
    ids = InputProfile((CFG_BATCH[0], spec.text_length), (CFG_BATCH[1], spec.text_length),
                       (CFG_BATCH[1], spec.text_length))
    return GraphProfile({"input_ids": ids, "attention_mask": ids})


def _expert_profile(spec: ModelSpec, latent: _LatentRange) -> GraphProfile:
    c, length, dim = spec.latent_channels, spec.text_length, spec.text_dim
    lo, hi = CFG_BATCH
    # opt at batch 2: guidance on is the normal case (Wan's default scales are 4 and 3).
    return GraphProfile({
        "hidden_states": InputProfile((lo, c, *latent.min), (hi, c, *latent.opt), (hi, c, *latent.max)),
        "timestep": InputProfile((lo,), (hi,), (hi,)),
        "encoder_hidden_states": InputProfile((lo, length, dim), (hi, length, dim), (hi, length, dim)),
    })


def vae_cache_layout(vae: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """(name, channels, spatial scale) of every step-decoder cache, from the manifest's ``vae_decoder`` block."""
    try:
        cache = vae["cache"]
        return list(zip(cache["names"], map(int, cache["channels"]), map(int, cache["scales"]), strict=True))
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"manifest vae_decoder.cache is malformed: {err!r}") from None


def _vae_int(vae: Mapping[str, Any], key: str) -> int:
    try:
        return int(vae[key])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"manifest vae_decoder lacks an integer {key!r}") from None


def _vae_profile(vae: Mapping[str, Any], latent: _LatentRange, *, with_caches: bool) -> GraphProfile:
    z, frames = _vae_int(vae, "z_dim"), _vae_int(vae["cache"], "frames")
    # One latent frame per call: the decoder streams (init for the first frame, step for each later one).
    inputs = {"latent": InputProfile(*((VAE_BATCH, z, 1, h, w) for _, h, w in (latent.min, latent.opt, latent.max)))}
    if with_caches:
        for name, channels, scale in vae_cache_layout(vae):
            inputs[name] = InputProfile(*((VAE_BATCH, channels, frames, h * scale, w * scale)
                                          for _, h, w in (latent.min, latent.opt, latent.max)))
    return GraphProfile(inputs)


def _accepted_ranges(manifest: Manifest, name: str, graph: Mapping[str, Any]) -> dict[str, tuple[Shape, tuple]]:
    """Per input, (min, max) the exported graph accepts; a max entry of None means unbounded."""
    if name in (VAE_INIT, VAE_STEP):
        # The VAE export records its limits in the vae_decoder block (h and w are unbounded above).
        vae = manifest.vae_decoder
        z, batch, hw = _vae_int(vae, "z_dim"), _vae_int(vae, "max_batch"), _vae_int(vae, "min_latent_hw")
        frames = _vae_int(vae["cache"], "frames")
        ranges = {"latent": ((1, z, 1, hw, hw), (batch, z, 1, None, None))}
        if name == VAE_STEP:
            for cache, channels, scale in vae_cache_layout(vae):
                ranges[cache] = ((1, channels, frames, hw * scale, hw * scale), (batch, channels, frames, None, None))
        return ranges
    try:
        return {k: (tuple(v["min"]), tuple(v["max"])) for k, v in graph["shape_ranges"].items()}
    except (KeyError, TypeError, AttributeError):
        raise ArtifactError(f"manifest graph {name!r} has no valid shape_ranges (re-export with this wanrt)") from None


# Which serving limit to blame when a latent dim leaves what the graph accepts (too big / too small).
_LIMIT_FOR_DIM = {"latent frames": ("max_frames", "max_frames"), "latent height": ("max_height", "min_size"),
                  "latent width": ("max_width", "min_size"), "cache height": ("max_height", "min_size"),
                  "cache width": ("max_width", "min_size")}


def _check_against_graph(name: str, graph: Mapping[str, Any], profile: GraphProfile,
                         accepted: Mapping[str, tuple[Shape, tuple]], spec: ModelSpec, limits: Limits) -> None:
    declared = list(graph.get("inputs", []))
    if declared != list(profile.inputs):
        raise ArtifactError(f"graph {name!r} has inputs {declared}; the tensorrt backend drives "
                            f"{list(profile.inputs)} (re-export with this wanrt)")
    for tensor, p in profile.inputs.items():
        if tensor not in accepted:
            raise ArtifactError(f"manifest graph {name!r} has no shape range for input {tensor!r}")
        low, high = accepted[tensor]
        if len(low) != len(p.min) or len(high) != len(p.min):
            raise ArtifactError(f"{name}: input {tensor!r} has rank {len(low)} in the manifest, the pipeline "
                                f"sends rank {len(p.min)}")
        for d, (lo, hi) in enumerate(zip(low, high, strict=True)):
            label = dim_label(tensor, d)
            too_big, too_small = hi is not None and p.max[d] > hi, p.min[d] < lo
            if not (too_big or too_small):
                continue
            need, bound = (p.max[d], hi) if too_big else (p.min[d], lo)
            where = (f"{name}.onnx accepts {tensor} dim {d} ({label}) {'up to' if too_big else 'from'} {bound}, "
                     f"but the limits need {need}")
            if label in _LIMIT_FOR_DIM:
                field = _LIMIT_FOR_DIM[label][0 if too_big else 1]
                raise InvalidRequestError(field, f"{getattr(limits, field)} is beyond what the artifact serves: "
                                                 f"{where}{_video_hint(label, bound, too_big, spec)}")
            raise ArtifactError(f"the artifact cannot serve the pipeline: {where}")


def _video_hint(label: str, bound: int, too_big: bool, spec: ModelSpec) -> str:
    """The graph's bound in request units (video frames, pixels), which is what the user chose."""
    side = "at most" if too_big else "at least"
    if label == "latent frames":
        return f", i.e. {side} {video_frames(bound, spec.vae_scale_temporal)} video frames"
    if label in ("latent height", "latent width"):
        return f", i.e. {side} {bound * spec.vae_scale_spatial} pixels"
    return ""
