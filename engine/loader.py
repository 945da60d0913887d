"""Opens a model for serving: an exported artifact (onnxruntime) or a diffusers folder (torch)."""

from __future__ import annotations

from pathlib import Path

from wanrt.engine.device import parse_device
from wanrt.engine.model_files import ManifestCheck
from wanrt.engine.pipeline import VideoPipeline
from wanrt.engine.spec import spec_from_diffusers
from wanrt.engine.text import PromptTokenizer
from wanrt.errors import ArtifactError, ModelFormatError

BACKENDS = ("onnxruntime", "torch", "tensorrt")


def load_pipeline(model: Path, backend: str, *, device: str = "cpu",
                  check: ManifestCheck | None = None) -> VideoPipeline:
    """Checks the model (hashes, configs) and loads every network before returning: failures come at start.

    ``check`` (trust's signature check, for ``--trust``) sees the model folder's manifest bytes before anything
    else is read; every file is then read once, strictly inside the folder, hashed against that manifest."""
    parse_device(device)  # a mistyped device fails alike for every backend, before anything loads
    model = Path(model)
    if backend == "onnxruntime":
        return _load_artifact(model, device, check)
    if backend == "torch":
        if check is not None:
            raise ModelFormatError("--trust checks wanrt artifact and engines folders; the torch backend loads a "
                                   "diffusers folder, which carries no wanrt signature")
        return _load_diffusers(model, device)
    if backend == "tensorrt":  # model: an engines folder from `wanrt build-engines` (it names its artifact)
        from wanrt.engine.backends.tensorrt import load_tensorrt_pipeline

        return load_tensorrt_pipeline(model, device, check)
    raise ModelFormatError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def load_pipelines(model: Path, backend: str, devices: tuple[str, ...], *,
                   cfg_parallel: bool = False, check: ManifestCheck | None = None) -> list[VideoPipeline]:
    """One pipeline per worker: one per device, or with ``cfg_parallel`` one per pair of devices, the pair
    running the cond and uncond halves of each guided step at once (backends/cfg_parallel.py)."""
    if not cfg_parallel:
        return [load_pipeline(model, backend, device=device, check=check) for device in devices]
    if len(devices) < 2 or len(devices) % 2:
        raise ModelFormatError(f"--cfg-parallel pairs devices: give an even number of --device, got {len(devices)}")
    from wanrt.engine.backends.cfg_parallel import CfgParallelBackend

    pipelines = []
    for first, second in zip(devices[::2], devices[1::2], strict=True):
        a = load_pipeline(model, backend, device=first, check=check)
        b = load_pipeline(model, backend, device=second, check=check)
        pipelines.append(VideoPipeline(a.spec, a.tokenizer, CfgParallelBackend(a.backend, b.backend),
                                       identity={**a.identity, "cfg_parallel": f"{first}+{second}"},
                                       limits=a.limits, defaults=a.defaults))
    return pipelines


def _load_artifact(art_dir: Path, device: str, check: ManifestCheck | None) -> VideoPipeline:
    from wanrt.engine.artifact import MANIFEST_NAME, TOKENIZER_NAME, open_artifact
    from wanrt.engine.backends.onnxruntime import OnnxRuntimeBackend
    from wanrt.engine.defaults import defaults_for_artifact
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


def _load_diffusers(model_dir: Path, device: str) -> VideoPipeline:
    from wanrt.engine.artifact import sha256_file
    from wanrt.engine.backends.torch import TorchBackend
    from wanrt.engine.defaults import defaults_from_recipe, recipe_for

    spec = spec_from_diffusers(model_dir)
    tokenizer_json = model_dir / "tokenizer" / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise ModelFormatError(f"{tokenizer_json} is missing; `wanrt export` converts slow tokenizers")
    identity = {"backend": "torch", "model": str(model_dir.resolve()),
                "model_index_sha256": sha256_file(model_dir / "model_index.json")}
    return VideoPipeline(spec, PromptTokenizer(tokenizer_json, spec.text_length),
                         TorchBackend(model_dir, spec.experts, device=device), identity=identity,
                         defaults=defaults_from_recipe(recipe_for(model_dir, spec), spec))

