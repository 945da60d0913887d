"""Binding plans: for one call of one graph, every input's shape checked against the engine's profiles and every
output's shape and dtype to allocate, computed before anything touches the GPU.

TensorRT reports an out-of-profile shape as a bare ``False`` from set_input_shape (plus a log line); checking
here first turns that into an error naming the graph, the input, the dimension and the allowed range. Output
shapes are derived from the graph semantics rather than asked of TensorRT, so they can be checked without a
GPU (tests compare them with onnxruntime's real outputs) and cross-checked against the engine at run time.

Pure Python: no TensorRT needed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from wanrt.engine.artifact import Manifest
from wanrt.engine.tensorrt.memory import decoder_cache_bytes
from wanrt.engine.tensorrt.profiles import (
    TEXT_ENCODER,
    VAE_INIT,
    VAE_STEP,
    GraphProfile,
    Shape,
    dim_label,
    vae_cache_layout,
)
from wanrt.errors import ArtifactError, WanrtError

# ONNX input dtypes of the exported graphs: token ids and masks are int64, everything else float32 (engines
# compute in lower precision inside but keep the fp32 I/O of the ONNX graph).
_INT64_TENSORS = frozenset({"input_ids", "attention_mask"})


class BindingError(WanrtError, ValueError):
    """A call's input shapes do not fit the engine (outside its profiles, or inconsistent with each other)."""

    def __init__(self, graph: str, message: str, *, tensor: str | None = None, dim: int | None = None) -> None:
        super().__init__(f"{graph}: {message}")
        self.graph = graph
        self.tensor = tensor
        self.dim = dim


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Shape
    dtype: str  # numpy dtype name

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class BindingPlan:
    """What to bind for one engine call: inputs in the graph's order, then outputs in the graph's order."""

    graph: str
    profile_index: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def tensors(self) -> tuple[TensorSpec, ...]:
        return self.inputs + self.outputs

    def spec(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"{self.graph} has no tensor {name!r}")


def _dtype(tensor: str) -> str:
    return "int64" if tensor in _INT64_TENSORS else "float32"


class Planner:
    """Makes binding plans for the graphs of one artifact, against the engines' profiles."""

    def __init__(self, manifest: Manifest, profiles: Mapping[str, Sequence[GraphProfile]]) -> None:
        self._spec = manifest.spec
        self._vae = manifest.vae_decoder
        self._profiles = {name: tuple(p) for name, p in profiles.items()}
        self._outputs: dict[str, tuple[str, ...]] = {}
        for name, graph in manifest.graphs.items():
            if not self._profiles.get(name):
                raise ArtifactError(f"no optimisation profile for graph {name!r}")
            self._outputs[name] = tuple(graph.get("outputs", ()))
            expected = self._expected_outputs(name)
            if list(self._outputs[name]) != expected:
                raise ArtifactError(f"graph {name!r} has outputs {list(self._outputs[name])}; the tensorrt backend "
                                    f"expects {expected} (re-export with this wanrt)")
        self._caches = vae_cache_layout(self._vae)

    def _expected_outputs(self, graph: str) -> list[str]:
        if graph == TEXT_ENCODER:
            return ["last_hidden_state"]
        if graph in self._spec.experts:
            return ["noise_pred"]
        cache = self._vae.get("cache", {})
        if graph == VAE_INIT:
            return ["frames", *cache.get("names", [])]
        if graph == VAE_STEP:
            return ["frames", *cache.get("output_names", [])]
        raise ArtifactError(f"graph {graph!r} is not one the tensorrt backend runs")

    @property
    def graphs(self) -> tuple[str, ...]:
        return tuple(self._profiles)

    def _cache_tensors(self) -> set[str]:
        cache = self._vae.get("cache", {})
        return {*cache.get("names", []), *cache.get("output_names", [])}

    def io_bytes(self, graph: str) -> int:
        """Bytes of the I/O buffers the backend pools for ``graph`` (grow-only: each tensor at the largest shape
        its profiles accept). The decoder's caches are not among them: see ``cache_bytes``."""
        largest: dict[str, int] = {}
        caches = self._cache_tensors()
        for profile in self._profiles[graph]:
            plan = self.plan(graph, {name: p.max for name, p in profile.inputs.items()})
            for spec in plan.tensors:
                if spec.name not in caches:
                    largest[spec.name] = max(largest.get(spec.name, 0), spec.nbytes)
        return sum(largest.values())

    def cache_bytes(self) -> int:
        """Bytes of the streaming decoder's cache pair for the largest latent the engines accept: what the backend
        allocates while a video decodes (both sets; the caches keep the graphs' fp32 I/O)."""
        if VAE_STEP not in self._profiles or not self._caches:
            return 0
        _, _, _, h, w = max((p.inputs["latent"].max for p in self._profiles[VAE_STEP]), key=lambda s: s[3] * s[4])
        layout = [(channels, scale) for _, channels, scale in self._caches]
        return decoder_cache_bytes(layout, h, w, frames=int(self._vae["cache"]["frames"]),
                                   itemsize=np.dtype("float32").itemsize)

    def plan(self, graph: str, shapes: Mapping[str, Sequence[int]]) -> BindingPlan:
        """Checks ``shapes`` (input name -> shape) and returns the plan; BindingError names the first problem."""
        if graph not in self._profiles:
            raise BindingError(graph, f"no engine for this graph (have {', '.join(self._profiles)})")
        profiles = self._profiles[graph]
        names = list(profiles[0].inputs)
        missing = [n for n in names if n not in shapes]
        unexpected = [n for n in shapes if n not in names]
        if missing or unexpected:
            raise BindingError(graph, f"inputs must be {names}; missing {missing}, unexpected {unexpected}")
        request = {n: tuple(int(v) for v in shapes[n]) for n in names}
        index = self._select_profile(graph, profiles, request)
        self._check_consistent(graph, request)
        inputs = tuple(TensorSpec(n, request[n], _dtype(n)) for n in names)
        outputs = tuple(TensorSpec(n, s, "float32") for n, s in self._output_shapes(graph, request).items())
        return BindingPlan(graph, index, inputs, outputs)

    def check_engine_io(self, graph: str, io: Mapping[str, tuple[str, str]]) -> None:
        """Refuses an engine whose I/O tensors (name -> (mode, numpy dtype)) differ from what plans bind."""
        names = list(self._profiles[graph][0].inputs)
        expected = {n: ("input", _dtype(n)) for n in names}
        expected.update({n: ("output", "float32") for n in self._outputs[graph]})
        if dict(io) != expected:
            diff = sorted(set(io.items()) ^ set(expected.items()))
            raise ArtifactError(f"engine for {graph!r} has I/O tensors {dict(io)}; wanrt binds {expected} "
                                f"(differing: {diff}); rebuild it with `wanrt build-engines`")

    def _select_profile(self, graph: str, profiles: Sequence[GraphProfile], request: Mapping[str, Shape]) -> int:
        errors = []
        for index, profile in enumerate(profiles):
            error = _profile_mismatch(graph, profile, request)
            if error is None:
                return index
            errors.append(error)
        if len(errors) == 1:
            raise errors[0]
        raise BindingError(graph, "fits none of the engine's profiles: " + "; ".join(
            f"profile {i}: {str(e).removeprefix(graph + ': ')}" for i, e in enumerate(errors)))

    def _check_consistent(self, graph: str, request: Mapping[str, Shape]) -> None:
        """Relations between inputs that per-input ranges cannot express (TensorRT would fail or misbehave)."""
        batch = {n: s[0] for n, s in request.items()}
        if len(set(batch.values())) > 1:
            raise BindingError(graph, f"inputs disagree on the batch size: {batch}", dim=0)
        if graph == TEXT_ENCODER and request["input_ids"] != request["attention_mask"]:
            raise BindingError(graph, f"attention_mask shape {request['attention_mask']} differs from input_ids "
                                      f"shape {request['input_ids']}", tensor="attention_mask")
        if graph in self._spec.experts:
            # The patch embedding needs whole patches; the export's derived dims encode the same rule.
            for d, patch in zip((2, 3, 4), self._spec.patch_size, strict=True):
                size = request["hidden_states"][d]
                if size % patch:
                    raise BindingError(graph, f"input 'hidden_states' dim {d} ({dim_label('hidden_states', d)}) is "
                                              f"{size}, not a multiple of the patch size {patch}",
                                       tensor="hidden_states", dim=d)
        if graph == VAE_STEP:
            expected = self._cache_shapes(request["latent"])
            for name, shape in expected.items():
                got = request[name]
                for d, (g, e) in enumerate(zip(got, shape, strict=True)):
                    if g != e:
                        raise BindingError(graph, f"input {name!r} dim {d} ({dim_label(name, d)}) is {g}, but latent "
                                                  f"{request['latent']} needs cache shape {shape}", tensor=name, dim=d)

    def _cache_shapes(self, latent: Shape) -> dict[str, Shape]:
        batch, h, w = latent[0], latent[3], latent[4]
        frames = int(self._vae["cache"]["frames"])
        return {name: (batch, channels, frames, h * scale, w * scale) for name, channels, scale in self._caches}

    def _output_shapes(self, graph: str, request: Mapping[str, Shape]) -> dict[str, Shape]:
        outputs = self._outputs[graph]
        if graph == TEXT_ENCODER:
            batch, length = request["input_ids"]
            return {outputs[0]: (batch, length, self._spec.text_dim)}
        if graph in self._spec.experts:
            return {outputs[0]: request["hidden_states"]}  # a flow prediction per latent element
        latent = request["latent"]
        scale = int(self._vae["spatial_scale"])
        # The first latent frame decodes to one video frame, every later one to temporal_stride frames.
        frames = 1 if graph == VAE_INIT else int(self._vae["temporal_stride"])
        video = (latent[0], int(self._vae["out_channels"]), frames, latent[3] * scale, latent[4] * scale)
        return {outputs[0]: video, **dict(zip(outputs[1:], self._cache_shapes(latent).values(), strict=True))}


def _profile_mismatch(graph: str, profile: GraphProfile, request: Mapping[str, Shape]) -> BindingError | None:
    for name, p in profile.inputs.items():
        shape = request[name]
        if len(shape) != len(p.min):
            return BindingError(graph, f"input {name!r} has rank {len(shape)} {shape}, the engine takes rank "
                                       f"{len(p.min)}", tensor=name)
        d = p.first_outside(shape)
        if d is not None:
            return BindingError(graph, f"input {name!r} dim {d} ({dim_label(name, d)}) is {shape[d]}, outside the "
                                       f"engine profile's range {p.min[d]}..{p.max[d]} (shape {shape})",
                                tensor=name, dim=d)
    return None

