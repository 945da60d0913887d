"""Opens a model for serving: an exported artifact (onnxruntime) or a diffusers folder (torch)."""

from __future__ import annotations

import importlib
from pathlib import Path

from wanrt.engine.defaults import ModelDefaults, defaults_for_artifact, defaults_from_recipe, recipe_for
from wanrt.engine.device import CudaProbe, parse_device, resolve_device
from wanrt.engine.model_files import ManifestCheck
from wanrt.engine.pipeline import VideoPipeline
from wanrt.engine.spec import spec_from_diffusers
from wanrt.engine.text import PromptTokenizer
from wanrt.errors import ArtifactError, InvalidRequestError, ModelFormatError

BACKENDS = ("onnxruntime", "torch", "tensorrt")
# Where each backend says why it cannot use a CUDA device (its ``cuda_problem``), and whether it has a CPU path.
_CUDA_PROBES = {"onnxruntime": ("wanrt.engine.backends.onnxruntime", True),
                "torch": ("wanrt.engine.backends.torch", True),
                "tensorrt": ("wanrt.engine.tensorrt.engine", False)}


def usable_device(device: str, backend: str) -> str:
    """``device`` as ``backend`` will run it: ``cuda[:N]`` that it cannot use is DeviceUnavailableError (exit 2,
    one line: driver, provider or library), ``auto`` becomes cuda:0 or, logged, the CPU."""
    parse_device(device)  # a mistyped device fails alike for every backend, before anything loads
    if backend not in _CUDA_PROBES:
        raise ModelFormatError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    module, cpu_capable = _CUDA_PROBES[backend]

    def probe(index: int) -> str | None:
        check: CudaProbe = importlib.import_module(module).cuda_problem
        return check(index)

    return resolve_device(device, backend, probe, cpu_capable=cpu_capable)


def load_pipeline(model: Path, backend: str, *, device: str = "cpu", check: ManifestCheck | None = None,
                  residency: str | None = None, text_encoder: str | None = None) -> VideoPipeline:
    """Checks the model (hashes, configs) and loads every network before returning: failures come at start.

    ``check`` (trust's signature check, for ``--trust``) sees the model folder's manifest bytes before anything
    else is read; every file is then read once, strictly inside the folder, hashed against that manifest.
    ``residency`` (resident | per-stage) and ``text_encoder`` (resident | release | cpu) place the GPU backends'
    networks (engine/tensorrt/memory.py); None lets the memory plan (or the engines' build) choose."""
    parse_device(device)  # a mistyped device fails alike for every backend, before anything loads
    model = Path(model)
    if backend == "onnxruntime":
        for field, value in (("residency", residency), ("text_encoder", text_encoder)):
            if value is not None:
                raise InvalidRequestError(field, "places the networks of the tensorrt and torch backends; "
                                                 "onnxruntime runs every graph in one process")
        return _load_artifact(model, usable_device(device, backend), check)
    if backend == "torch":
        if check is not None:
            raise ModelFormatError("--trust checks wanrt artifact and engines folders; the torch backend loads a "
                                   "diffusers folder, which carries no wanrt signature")
        return _load_diffusers(model, usable_device(device, backend), residency, text_encoder)
    if backend == "tensorrt":  # model: an engines folder from `wanrt build-engines` (it names its artifact)
        from wanrt.engine.backends.tensorrt import load_tensorrt_pipeline

        # Probes the device itself, after every check of the engines folder that needs no TensorRT.
        return load_tensorrt_pipeline(model, device, check, residency=residency, text_encoder=text_encoder)
    raise ModelFormatError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def model_defaults(model: Path, backend: str) -> ModelDefaults:
    """What a request to ``model`` that leaves fields unset gets, read without loading any network (for `--help`):
    the same defaults load_pipeline gives the pipeline. A TensorRT engines folder's are its artifact's."""
    model = Path(model)
    if backend == "onnxruntime":
        from wanrt.engine.artifact import load_artifact

        manifest = load_artifact(model, verify_hashes=False)
        return defaults_for_artifact(manifest.defaults, manifest.spec)
    if backend == "torch":
        spec = spec_from_diffusers(model)
        return defaults_from_recipe(recipe_for(model, spec), spec)
    raise ModelFormatError(f"{backend} reads its defaults from the engines' artifact: give that folder with "
                           "--backend onnxruntime")


def load_pipelines(model: Path, backend: str, devices: tuple[str, ...], *, cfg_parallel: bool = False,
                   check: ManifestCheck | None = None, residency: str | None = None,
                   text_encoder: str | None = None) -> list[VideoPipeline]:
    """One pipeline per worker: one per device, or with ``cfg_parallel`` one per pair of devices, the pair
    running the cond and uncond halves of each guided step at once (backends/cfg_parallel.py)."""
    placement = {"check": check, "residency": residency, "text_encoder": text_encoder}
    if not cfg_parallel:
        return [load_pipeline(model, backend, device=device, **placement) for device in devices]
    if len(devices) < 2 or len(devices) % 2:
        raise ModelFormatError(f"--cfg-parallel pairs devices: give an even number of --device, got {len(devices)}")
    from wanrt.engine.backends.cfg_parallel import CfgParallelBackend

    pipelines = []
    for first, second in zip(devices[::2], devices[1::2], strict=True):
        a, b = (load_pipeline(model, backend, device=d, **placement) for d in (first, second))
        pipelines.append(VideoPipeline(a.spec, a.tokenizer, CfgParallelBackend(a.backend, b.backend),
                                       identity={**a.identity, "cfg_parallel": f"{first}+{second}"},
                                       limits=a.limits, defaults=a.defaults))
    return pipelines


def _load_artifact(art_dir: Path, device: str, check: ManifestCheck | None) -> VideoPipeline:
    from wanrt.engine.artifact import MANIFEST_NAME, TOKENIZER_NAME, open_artifact
    from wanrt.engine.backends.onnxruntime import OnnxRuntimeBackend
    from wanrt.engine.graph_forms import onnxruntime_file
    from wanrt.engine.model_files import ModelFolder

    folder = ModelFolder(art_dir, strict=check is not None)
    manifest, manifest_sha256 = open_artifact(folder, check)
    spec = manifest.spec
    if TOKENIZER_NAME not in manifest.files:
        raise ArtifactError(f"{folder.where(MANIFEST_NAME)} does not list {TOKENIZER_NAME}")
    tokenizer = folder.read(TOKENIZER_NAME, manifest.files[TOKENIZER_NAME], listed_in=MANIFEST_NAME)
    # Each graph's onnxruntime form where export made one (linear-memory attention), the graph itself otherwise.
    graphs = {name: onnxruntime_file(entry) for name, entry in manifest.graphs.items()}
    backend = OnnxRuntimeBackend(folder, graphs, device=device, session_config=manifest.onnxruntime_session_config,
                                 file_hashes=manifest.files)
    ran = backend.files_read
    for rel, expected in manifest.files.items():  # listed but not run here (other graph forms, configs): checked
        if rel not in ran and rel != TOKENIZER_NAME:
            folder.digest(rel, expected, listed_in=MANIFEST_NAME)
    # What ran, by the hashes of the bytes that were read (equal to the manifest's, or loading stopped above).
    identity = {
        "backend": "onnxruntime",
        "model": str(art_dir.resolve()),
        "manifest_sha256": manifest_sha256,
        **{f"{name}_sha256": ran[file] for name, file in graphs.items()},
    }
    return VideoPipeline(spec, PromptTokenizer(tokenizer.tobytes(), spec.text_length,
                                               where=folder.where(TOKENIZER_NAME)),
                         backend, identity=identity, graphs=backend.estimate_graphs,
                         defaults=defaults_for_artifact(manifest.defaults, spec))


def memory_plans(pipelines: list[VideoPipeline]) -> list[str]:
    """The GPU memory plan each pipeline's backend started with, rendered (none for the CPU backends)."""
    plans = [getattr(p.backend, "memory_plan", None) for p in pipelines]
    return [plan.render() for plan in plans if plan is not None]


def _load_diffusers(model_dir: Path, device: str, residency: str | None, text_encoder: str | None) -> VideoPipeline:
    from wanrt.engine.artifact import sha256_file
    from wanrt.engine.backends.torch import TorchBackend

    spec = spec_from_diffusers(model_dir)
    tokenizer_json = model_dir / "tokenizer" / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise ModelFormatError(f"{tokenizer_json} is missing; `wanrt export` converts slow tokenizers")
    identity = {"backend": "torch", "model": str(model_dir.resolve()),
                "model_index_sha256": sha256_file(model_dir / "model_index.json")}
    return VideoPipeline(spec, PromptTokenizer(tokenizer_json, spec.text_length),
                         TorchBackend(model_dir, spec.experts, device=device, residency=residency,
                                      text_encoder=text_encoder), identity=identity,
                         defaults=defaults_from_recipe(recipe_for(model_dir, spec), spec))

