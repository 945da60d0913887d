"""Peak-memory estimate of a request, read from the ONNX graphs the backend runs.

Each graph is shape-inferred (onnxruntime's symbolic shape inference, concrete dims) at a few probe sizes
and every intermediate tensor gets a size law: bytes at the probe x (size / probe size)^e x (batch / 2)^b,
with e and b read from how it grew between probes. A tensor the graph materialises as (tokens x tokens),
the attention scores of MatMul -> Softmax -> MatMul, comes out with e = 2 and so carries the quadratic term;
a fused attention operator's output is linear, and its kernel's own scratch is added per operator (see
``_workspace``). A request's activation peak is the largest live set while its nodes run in graph order, a
tensor living from the node that makes it to its last reader (view operators share their input's buffer).

The process peak is what the process holds when the request arrives (weights, runtime) plus the largest
stage: text encoder, one expert step with the CFG batch, the streaming decoder's frame step, each with the
pipeline's own arrays for that stage. ``--backend onnxruntime`` runs with onnxruntime's CPU arena off (see
engine/backends/onnxruntime.py), so a stage's buffers go back to the system when it ends and stages do not add up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from wanrt.engine.request import GenerationRequest
from wanrt.engine.spec import ModelSpec
from wanrt.errors import ArtifactError

# Operators whose output is a view of their first input in onnxruntime's CPU kernels (no new buffer).
_VIEW_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
# Fused attention operators: their scores are no graph tensor; some CPU kernels still build them (_workspace).
_FUSED_ATTENTION = frozenset({"Attention", "MultiHeadAttention", "GroupQueryAttention"})
_DTYPE_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2, 17: 1, 18: 1,
                19: 1, 20: 1}
_DIM_RE = re.compile(r"(?:(\d+)\*)?([A-Za-z_][A-Za-z_0-9]*)")
PROBE_BATCH = 2
_SMALL_TENSOR = 4096  # elements: external initializers up to this size are read (they may be shapes)
_CACHE: dict[str, GraphProfile] = {}  # graph key -> profile, for this process
_CACHE_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class GraphProfile:
    """One graph's activations as a function of batch and of its size variable (tokens or pixels)."""

    name: str
    probe_size: float  # the size variable at the first probe
    bytes_at_probe: np.ndarray  # per tensor, at batch PROBE_BATCH and probe_size
    size_exponent: np.ndarray
    batch_exponent: np.ndarray
    born: np.ndarray  # step at which each tensor is made (-1: a graph input)
    dies: np.ndarray  # step after which it is freed (n_steps: held to the end)
    n_steps: int
    has_quadratic_term: bool  # some tensor or kernel grows with the square of the size variable

    def peak_bytes(self, batch: int, size: float) -> float:
        """Largest live set over the graph's steps for this batch and size."""
        sizes = self.bytes_at_probe * (size / self.probe_size) ** self.size_exponent \
            * (batch / PROBE_BATCH) ** self.batch_exponent
        delta = np.zeros(self.n_steps + 3)
        np.add.at(delta, self.born + 1, sizes)
        np.add.at(delta, self.dies + 2, -sizes)
        return float(np.cumsum(delta).max())


def _dim_value(dim: str | int, values: Mapping[str, int]) -> int:
    if isinstance(dim, int):
        return dim
    match = _DIM_RE.fullmatch(dim.replace(" ", ""))
    if match is None or match.group(2) not in values:
        raise ArtifactError(f"cannot size input dimension {dim!r} for the memory estimate")
    return int(match.group(1) or 1) * values[match.group(2)]


def _concrete(model: object, values: Mapping[str, int], base_dir: Path) -> object:
    """A copy of the graph (no weights) with every input dimension fixed from ``values``."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor

    concrete = onnx.ModelProto()
    concrete.CopyFrom(model)
    graph = concrete.graph
    # Weights kept as external data are not read: they become typed inputs, whose shapes are all inference
    # needs. Small ones may give shapes (Reshape targets), so those are read.
    external = []
    for tensor in [i for i in graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]:
        if np.prod(tensor.dims, dtype=np.int64) <= _SMALL_TENSOR:
            load_external_data_for_tensor(tensor, str(base_dir))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
            continue
        external.append(tensor)
    for tensor in external:
        graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        graph.initializer.remove(tensor)
    initializers = {i.name for i in graph.initializer} | {t.name for t in external}
    for value in concrete.graph.input:
        if value.name in initializers:
            continue
        for dim in value.type.tensor_type.shape.dim:
            given = dim.dim_value if dim.HasField("dim_value") else dim.dim_param
            dim.Clear()
            dim.dim_value = _dim_value(given, values)
    return concrete


def _tensor_bytes(model: object, values: Mapping[str, int],
                  base_dir: Path) -> tuple[dict[str, float], dict[int, float]]:
    """Bytes of every non-weight tensor, and each node's kernel scratch, with the inputs sized by ``values``."""
    graph = _infer_shapes(_concrete(model, values, base_dir)).graph
    sizes: dict[str, float] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if None in dims:
            raise ArtifactError(f"tensor {value.name!r} has no concrete shape; cannot estimate memory")
        sizes[value.name] = float(np.prod(dims, dtype=np.float64)) * _DTYPE_BYTES.get(tensor.elem_type, 4)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph.input, *graph.value_info, *graph.output]}
    scratch = {i: _workspace(node, shapes) for i, node in enumerate(graph.node)}
    return sizes, {i: s for i, s in scratch.items() if s}


def _infer_shapes(model: object) -> object:
    """onnxruntime's symbolic shape inference (it follows Reshape/Expand targets computed in the graph, which
    onnx's own inference leaves unknown), taught the opset-18 reductions whose axes are an input, and without
    the tool's habit of saving the model to the working directory when it fails."""
    from onnx import helper
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference, get_shape_from_sympy_shape

    class Inference(SymbolicShapeInference):
        def __init__(self) -> None:
            super().__init__(2**31 - 1, True, False, 0)
            for op in ("ReduceL1", "ReduceL2", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare",
                       "ReduceLogSumExp"):
                self.dispatcher_.setdefault(op, self._infer_ReduceMean)  # opset >= 18: ReduceSum's rules
            contrib_attention = self.dispatcher_["Attention"]
            # The tool knows only com.microsoft.Attention by that name; ONNX's own (opset 23) has other inputs.
            self.dispatcher_["Attention"] = lambda node: self._onnx_attention(node) \
                if node.domain in ("", "ai.onnx") else contrib_attention(node)

        def _onnx_attention(self, node: object) -> None:
            query, value = self._get_shape(node, 0), self._get_shape(node, 2)
            if len(query) == 4:  # (batch, heads, tokens, head size)
                shape = [query[0], query[1], query[2], value[3]]
            else:  # (batch, tokens, heads x head size)
                heads = {a.name: a.i for a in node.attribute}
                shape = [query[0], query[1], heads["q_num_heads"] * value[2] // heads["kv_num_heads"]]
            element = self.known_vi_[node.input[0]].type.tensor_type.elem_type
            self.known_vi_[node.output[0]].CopyFrom(
                helper.make_tensor_value_info(node.output[0], element, get_shape_from_sympy_shape(shape)))

    inference = Inference()
    try:
        inference._preprocess(model)
        complete = False
        while inference.run_:
            complete = inference._infer_impl()
        inference._update_output_from_vi()
    except Exception as err:  # the tool raises bare exceptions for graphs it cannot follow
        raise ArtifactError(f"cannot infer tensor shapes for the memory estimate: {err!r}") from None
    if not complete:
        raise ArtifactError("cannot infer every tensor shape for the memory estimate")
    return inference.out_mp_


def _workspace(node: object, shapes: Mapping[str, list[int]]) -> float:
    """Kernel-internal buffers that are no graph tensor, where they can be large: the attention probabilities
    of fused attention operators that build them whole on CPU. Measured with onnxruntime 1.23 (arena off,
    2 heads, 4096 tokens): ONNX ``Attention`` (opset 23) takes the full (heads x queries x keys) float32
    matrix, 129 MiB; ``com.microsoft.MultiHeadAttention`` without mask or bias runs tiled, 3 MiB."""
    if node.op_type not in _FUSED_ATTENTION:
        return 0.0
    tiled = node.domain == "com.microsoft" and not any(node.input[4:6])  # no key padding mask, no bias
    query = shapes.get(node.input[0])
    key = shapes.get(node.input[1]) if len(node.input) > 1 and node.input[1] else query
    heads = next((a.i for a in node.attribute if a.name in ("num_heads", "q_num_heads")), 0)
    if tiled or not query or not key:
        return 0.0
    if len(query) == 4:  # (batch, heads, tokens, head size)
        return 4.0 * query[0] * query[1] * query[2] * key[2]
    return 4.0 * query[0] * max(heads, 1) * query[1] * key[1]  # (batch, tokens, hidden)


def _graph_inputs(model: object) -> list[str]:
    initializers = {i.name for i in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name not in initializers]


def profile_graph(path: Path, name: str, probes: list[tuple[int, float, Mapping[str, int]]]) -> GraphProfile:
    """Sizes ``path``'s tensors at three probes (batch, size variable, input dims): two sizes at batch 2, one
    at batch 1; tensors are then held as power laws in size and batch."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    (b0, s0, v0), (_, s1, v1), (b2, _, v2) = probes
    at0, scratch0 = _tensor_bytes(model, v0, path.parent)
    at1, scratch1 = _tensor_bytes(model, v1, path.parent)
    at2, scratch2 = _tensor_bytes(model, v2, path.parent)
    nodes = list(model.graph.node)
    inputs = _graph_inputs(model)
    outputs = {o.name for o in model.graph.output}
    initializers = {i.name for i in model.graph.initializer}
    root: dict[str, str] = {}  # view -> the tensor whose buffer it shares
    born: dict[str, int] = {name: -1 for name in inputs}
    dies: dict[str, int] = {name: len(nodes) for name in inputs}  # the caller holds its inputs throughout
    for step, node in enumerate(nodes):
        for tensor in node.input:
            if tensor and tensor in born or tensor in root:
                owner = root.get(tensor, tensor)
                dies[owner] = max(dies.get(owner, step), step)
        for index, tensor in enumerate(node.output):
            if not tensor:
                continue
            source = node.input[0] if node.input else ""
            if node.op_type in _VIEW_OPS and index == 0 and source and source not in initializers \
                    and (source in born or source in root):
                root[tensor] = root.get(source, source)
                continue
            born[tensor] = step
            dies[tensor] = len(nodes) if tensor in outputs else step
    for tensor in outputs:
        dies[root.get(tensor, tensor)] = len(nodes)
    names = [t for t in born if t in at0]
    scratch_steps = sorted(scratch0)
    base = np.array([at0[t] for t in names] + [scratch0[i] for i in scratch_steps])
    grown = np.array([at1[t] for t in names] + [scratch1.get(i, 0.0) for i in scratch_steps])
    halved = np.array([at2[t] for t in names] + [scratch2.get(i, 0.0) for i in scratch_steps])
    with np.errstate(divide="ignore", invalid="ignore"):
        size_exp = np.where(base > 0, np.log(np.maximum(grown, 1e-30) / base) / np.log(s1 / s0), 0.0)
        batch_exp = np.where(base > 0, np.log(np.maximum(halved, 1e-30) / base) / np.log(b2 / b0), 0.0)
    size_exp = np.clip(np.round(size_exp, 6), 0.0, None)
    batch_exp = np.clip(np.round(batch_exp, 6), 0.0, None)
    return GraphProfile(
        name=name, probe_size=s0, bytes_at_probe=base, size_exponent=size_exp, batch_exponent=batch_exp,
        born=np.array([born[t] for t in names] + scratch_steps, dtype=np.int64),
        dies=np.array([dies[t] for t in names] + scratch_steps, dtype=np.int64),
        n_steps=len(nodes), has_quadratic_term=bool((size_exp > 1.5).any()),
    )


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """A request's estimated peak, in bytes: what the process holds already plus its largest stage."""

    resident: int  # held before the request (weights, runtime, libraries)
    stages: dict[str, int]  # stage -> bytes it adds at its peak

    @property
    def peak_stage(self) -> str:
        return max(self.stages, key=self.stages.get)

    @property
    def total(self) -> int:
        return self.resident + max(self.stages.values())


# onnxruntime's CPU kernels and the allocator hold more than the live graph tensors (kernel scratch, pages
# not yet returned, the first run's one-off buffers). Measured over the grid in README.md ("Memory
# admission"); the table there shows the estimate stays above every measured peak with these.
ACTIVATION_MARGIN = 1.4
RUNTIME_OVERHEAD = 96 << 20
# The scheduler keeps a few latent-sized arrays (UniPC: model outputs of the last orders, x0, the
# corrector's inputs); guidance adds the batch and cond/uncond copies.
_SCHEDULER_LATENTS = 10
_CFG_LATENTS = 4


def _graph_key(path: Path, probes: list) -> str:
    """The graph's structure (weights aside) and the probes: the two experts of a Wan2.2 model share a key."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    digest = hashlib.sha256(f"v1 {probes!r}".encode())
    for node in model.graph.node:
        digest.update(node.SerializeToString())
    for value in model.graph.input:
        digest.update(value.SerializeToString())
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where profiles are kept between runs: $WANRT_CACHE_DIR, else $XDG_CACHE_HOME/wanrt, else ~/.cache/wanrt."""
    if os.environ.get("WANRT_CACHE_DIR"):
        return Path(os.environ["WANRT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wanrt"


def _cache_key() -> bytes | None:
    """The installation's key authenticating cached profiles; None (no cache) when there is no usable state
    folder: a profile nobody can vouch for is made again, never trusted."""
    from wanrt.errors import StateError
    from wanrt.state import secret

    try:
        return secret("cache.key")
    except StateError:
        return None


def _load_trusted(path: Path, key: str) -> GraphProfile | None:
    """A cached profile whose tag this installation's key verifies for ``key`` (the graph and probes it was made
    for); None for a missing, foreign or altered file (an overwritten profile must not let a request past the
    memory budget)."""
    mac_key = _cache_key()
    if mac_key is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    tag, body = data[:_TAG_BYTES], data[_TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(mac_key, key, body)):
        return None
    return _load_cached(io.BytesIO(body))


def _store_trusted(path: Path, key: str, profile: GraphProfile) -> None:
    mac_key = _cache_key()
    if mac_key is None:
        return
    buffer = io.BytesIO()
    np.savez(buffer, **dataclasses.asdict(profile))
    body = buffer.getvalue()
    _store_bytes(path, _tag(mac_key, key, body) + body)


def _tag(mac_key: bytes, key: str, body: bytes) -> bytes:
    return hmac.new(mac_key, f"wanrt memory profile v2\0{key}\0".encode() + body, hashlib.sha256).digest()


_TAG_BYTES = 32


def _load_cached(path: Path | io.BytesIO) -> GraphProfile | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return GraphProfile(name=str(data["name"]), probe_size=float(data["probe_size"]),
                                bytes_at_probe=data["bytes_at_probe"], size_exponent=data["size_exponent"],
                                batch_exponent=data["batch_exponent"], born=data["born"], dies=data["dies"],
                                n_steps=int(data["n_steps"]), has_quadratic_term=bool(data["has_quadratic_term"]))
    except (OSError, KeyError, ValueError):
        return None


def _store_cached(path: Path, profile: GraphProfile) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **dataclasses.asdict(profile))
    _store_bytes(path, buffer.getvalue())


def _store_bytes(path: Path, data: bytes) -> None:
    """Best effort: a read-only home (the confined container) only means profiling again next start."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(path)
    except OSError:
        pass


def _profile_in_child(jobs: Mapping[str, tuple[Path, list]]) -> dict[str, GraphProfile]:
    """Profiles ``{key: (graph, probes)}`` in one child process (shape inference keeps a few hundred MB of
    Python objects that would otherwise stay in the serving process)."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="wanrt-memory-") as tmp:
        job = [{"graph": str(path), "probes": probes, "out": str(Path(tmp) / f"{key}.npz")}
               for key, (path, probes) in jobs.items()]
        done = subprocess.run([sys.executable, "-m", "wanrt.engine.memory", json.dumps(job)], capture_output=True,
                              text=True, check=False)
        profiles = {key: _load_cached(Path(tmp) / f"{key}.npz") if done.returncode == 0 else None for key in jobs}
    failed = [str(jobs[key][0].name) for key, profile in profiles.items() if profile is None]
    if failed:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise ArtifactError(f"cannot profile {', '.join(failed)} for the memory estimate: "
                            f"{lines[-1] if lines else f'exit {done.returncode}'}")
    return profiles


def load_profiles(jobs: Mapping[str, tuple[Path, list]]) -> dict[str, GraphProfile]:
    """Profiles for ``{name: (graph file, probes)}``: from the cache, else made in a child process (shape
    inference holds a few hundred MB that would otherwise stay in the serving process) and cached."""
    keys = {name: _graph_key(path, probes) for name, (path, probes) in jobs.items()}
    profiles: dict[str, GraphProfile] = {}
    with _CACHE_LOCK:
        for name, key in keys.items():
            if key in _CACHE:
                profiles[name] = _CACHE[key]
            elif (cached := _load_trusted(cache_dir() / f"memory-{key}.profile", key)) is not None:
                profiles[name] = _CACHE[key] = cached
        todo: dict[str, str] = {}  # key -> the first graph name that needs it
        for name, key in keys.items():
            if name not in profiles:
                todo.setdefault(key, name)
        if todo:
            for key, profile in _profile_in_child({key: jobs[name] for key, name in todo.items()}).items():
                _CACHE[key] = profile
                _store_trusted(cache_dir() / f"memory-{key}.profile", key, profile)
        return {name: dataclasses.replace(_CACHE[key], name=name) for name, key in keys.items()}


class MemoryEstimator:
    """Estimates a request's peak memory on an exported artifact's graphs, as onnxruntime runs them on CPU."""

    def __init__(self, graphs: Mapping[str, Path], spec: ModelSpec, *, resident: int) -> None:
        self.spec = spec
        self.resident = resident
        self._patch = tuple(spec.patch_size)
        text = {"text_length": spec.text_length}

        def expert_dims(batch: int, frames: int, hp: int, wp: int) -> dict[str, int]:
            return {"batch": batch, "latent_frames": frames * self._patch[0], "latent_height_patches": hp,
                    "latent_width_patches": wp, **text}

        # Size variable of the experts: video tokens; of the decoder: latent pixels of one frame. Probes at
        # batch 2 and two sizes, and at batch 1; shape inference allocates nothing, so they can be large.
        expert = [(2, 4 * 16 * 16, expert_dims(2, 4, 16, 16)), (2, 8 * 32 * 32, expert_dims(2, 8, 32, 32)),
                  (1, 4 * 16 * 16, expert_dims(1, 4, 16, 16))]
        vae = [(2, 32 * 32, {"batch": 2, "height": 32, "width": 32}),
               (2, 64 * 64, {"batch": 2, "height": 64, "width": 64}),
               (1, 32 * 32, {"batch": 1, "height": 32, "width": 32})]
        text_probes = [(2, 1.0, {"batch": 2, **text}), (2, 2.0, {"batch": 2, **text}), (1, 1.0, {"batch": 1, **text})]
        probes = {**{e: expert for e in spec.experts}, "vae_decoder_init": vae, "vae_decoder_step": vae,
                  "text_encoder": text_probes}
        missing = sorted(set(probes) - set(graphs))
        if missing:
            raise ArtifactError(f"the memory estimate needs the graphs {', '.join(missing)}")
        self.profiles = load_profiles({name: (Path(graphs[name]), p) for name, p in probes.items()})

    @property
    def quadratic_graphs(self) -> list[str]:
        """Graphs whose activations grow with the square of their size (materialised attention)."""
        return [name for name, p in self.profiles.items() if p.has_quadratic_term]

    def estimate(self, request: GenerationRequest) -> MemoryEstimate:
        spec = self.spec
        _, channels, frames, height, width = request.latent_shape(spec.latent_channels, spec.vae_scale_temporal,
                                                                  spec.vae_scale_spatial)
        cfg = request.guidance > 1.0 or request.effective_guidance_2 > 1.0
        batch = 2 if cfg else 1
        latent = 4 * channels * frames * height * width
        tokens = (frames // self._patch[0]) * (height // self._patch[1]) * (width // self._patch[2])
        text = 4 * batch * spec.text_length * spec.text_dim

        def run(graph: str, graph_batch: int, size: float) -> float:
            return ACTIVATION_MARGIN * self.profiles[graph].peak_bytes(graph_batch, size)

        expert = max(run(e, batch, tokens) for e in spec.experts)
        denoise = expert + (_SCHEDULER_LATENTS + (_CFG_LATENTS if cfg else 0)) * latent + text
        # Decoded frames: uint8 RGB of the whole clip may wait in memory (the .npy writer, a slow gRPC
        # reader), and one step's float frames go through a few float temporaries on their way to uint8.
        pixels = height * width * spec.vae_scale_spatial ** 2
        step_frames = spec.vae_scale_temporal * pixels
        decode = max(run("vae_decoder_init", 1, height * width), run("vae_decoder_step", 1, height * width)) \
            + 2 * latent + 3 * request.frames * pixels + 4 * 4 * 3 * step_frames
        return MemoryEstimate(resident=self.resident, stages={
            "text": int(run("text_encoder", batch, 1.0) + latent + RUNTIME_OVERHEAD),
            "denoise": int(denoise + RUNTIME_OVERHEAD),
            "decode": int(decode + RUNTIME_OVERHEAD),
        })


def _main(argv: list[str]) -> int:
    """The child process of ``_profile_in_child``: profiles each graph and writes it as .npz."""
    import json

    for job in json.loads(argv[0]):
        probes = [(batch, size, dict(values)) for batch, size, values in job["probes"]]
        path = Path(job["graph"])
        _store_cached(Path(job["out"]), profile_graph(path, path.stem, probes))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
