"""The exported artifact folder: ONNX graphs, tokenizer, scheduler config and a manifest that hashes them all.

Read on the serving path, so this module imports neither torch nor the exporter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from wanrt.engine.defaults import ModelDefaults
from wanrt.engine.graph_forms import referenced_files
from wanrt.engine.spec import ModelSpec
from wanrt.errors import ArtifactError, ModelFormatError

if TYPE_CHECKING:
    from wanrt.engine.model_files import ManifestCheck, ModelFolder

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
TOKENIZER_NAME = "tokenizer.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
# Compute precision a graph may record ("dtype"; absent: fp32). Graph inputs and outputs are fp32 whatever it is.
GRAPH_DTYPES = ("fp32", "bf16", "fp16")
# Files onnxruntime or TensorRT would load: one present but unlisted means the folder was tampered with.
_MODEL_SUFFIXES = (".onnx", ".onnx.data")


@dataclasses.dataclass(frozen=True)
class GraphQuantization:
    """What `wanrt quantize` did to one graph: which nodes carry Q/DQ and which were left out, and why."""

    quantized: list[dict[str, str]]  # {"name": ONNX node, "module": torch module it came from}
    excluded: list[dict[str, str]]  # {"name", "op", "module", "reason"}
    calibration_calls: int
    smoothquant: dict[str, Any] | None = None  # {"alpha", "activations"} when SmoothQuant ran

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> GraphQuantization:
        values = _fields_of(cls, data, "quantization.graphs")
        for name in ("quantized", "excluded"):
            if not isinstance(values[name], list) or not all(isinstance(n, dict) for n in values[name]):
                raise ArtifactError(f"{MANIFEST_NAME}: quantization {name} must be a list of objects")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Quantization:
    """The ``quantization`` block of a quantized artifact (absent from FP32 ones).

    ``onnxruntime_session_config`` is what every onnxruntime session of these graphs must set (the report's
    sessions and the serving backend alike): the graphs were measured with it, and FP8 ones load only with it.
    The other provenance fields are records for people and audits; nothing branches on them.
    """

    mode: str  # "int8" or "fp8"
    graphs: dict[str, GraphQuantization]  # the quantized graphs by name
    onnxruntime_session_config: dict[str, str] = dataclasses.field(default_factory=dict)
    weights: str = ""
    activations: str = ""
    tools: dict[str, str] = dataclasses.field(default_factory=dict)  # package -> version
    source: dict[str, Any] = dataclasses.field(default_factory=dict)  # the FP32 artifact and its manifest hash
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)
    unquantized: dict[str, Any] = dataclasses.field(default_factory=dict)
    report: dict[str, Any] = dataclasses.field(default_factory=dict)  # the accuracy report's summary
    gate: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["graphs"] = {name: g.to_dict() for name, g in self.graphs.items()}
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Quantization:
        values = _fields_of(cls, data, "quantization")
        if values["mode"] not in QUANTIZATION_MODES:
            raise ArtifactError(f"{MANIFEST_NAME}: quantization mode {values['mode']!r} is not one of "
                                f"{', '.join(QUANTIZATION_MODES)}")
        if not isinstance(values["graphs"], dict):
            raise ArtifactError(f"{MANIFEST_NAME}: quantization graphs is not an object")
        values["graphs"] = {name: GraphQuantization.from_dict(g) for name, g in values["graphs"].items()}
        config = values.get("onnxruntime_session_config", {})
        if not isinstance(config, dict) or not all(isinstance(v, str) for v in config.values()):
            raise ArtifactError(f"{MANIFEST_NAME}: quantization onnxruntime_session_config must map keys to strings")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` records; ``files`` maps each relative path (POSIX) to its sha256.

    Fields without a default are required. A field added later gets a default (what older manifests mean by
    leaving it out), so they keep loading; a typed section is a class with ``to_dict``/``from_dict``, listed
    in ``_SECTIONS``. Optional sections left at None are not written.
    """

    format_version: int
    source_model: dict[str, Any]  # {"path": ..., "config_sha256": {relative config path: sha256}}
    spec: ModelSpec
    graphs: dict[str, dict[str, Any]]  # name -> {"file", "inputs", "outputs", ...}
    vae_decoder: dict[str, Any]  # the streaming decoder's cache layout and temporal stride
    files: dict[str, str]
    opset: int
    versions: dict[str, str]
    parity: list[dict[str, Any]]
    created_utc: str
    quantization: Quantization | None = None  # set by `wanrt quantize`
    # Request defaults (engine/defaults.py), set at export; absent from artifacts made before them.
    defaults: ModelDefaults | None = None
    # LoRAs merged into the experts at export: {"expert", "file", "sha256", "scale", "format", "modules", ...}.
    loras: list[dict[str, Any]] | None = None

    @property
    def onnxruntime_session_config(self) -> dict[str, str]:
        """The session config entries onnxruntime needs for these graphs (none for an FP32 artifact)."""
        return dict(self.quantization.onnxruntime_session_config) if self.quantization else {}

    def to_dict(self) -> dict[str, Any]:
        data = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            data[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Builds a manifest from parsed JSON; raises ArtifactError when a field is missing or malformed."""
        values = _fields_of(cls, data, None)
        for name in ("source_model", "spec", "graphs", "vae_decoder", "files", "versions"):
            if not isinstance(values[name], dict):
                raise ArtifactError(f"{MANIFEST_NAME}: {name} is not an object")
        if not all(isinstance(g, dict) and isinstance(g.get("file"), str) for g in values["graphs"].values()):
            raise ArtifactError(f"{MANIFEST_NAME}: every graph needs a \"file\"")
        if not all(g.get("dtype", "fp32") in GRAPH_DTYPES for g in values["graphs"].values()):
            raise ArtifactError(f"{MANIFEST_NAME}: a graph's dtype must be one of {', '.join(GRAPH_DTYPES)}")
        if not all(isinstance(h, str) for h in values["files"].values()):
            raise ArtifactError(f"{MANIFEST_NAME}: files must map paths to sha256 strings")
        try:
            values["spec"] = ModelSpec.from_dict(values["spec"])
        except (ModelFormatError, TypeError) as err:
            raise ArtifactError(f"{MANIFEST_NAME} has an invalid spec: {err}") from None
        if values.get("loras") is not None and not (isinstance(values["loras"], list)
                                                    and all(isinstance(e, dict) for e in values["loras"])):
            raise ArtifactError(f"{MANIFEST_NAME}: loras must be a list of objects")
        for name, section in _SECTIONS.items():
            if values.get(name) is not None:
                values[name] = section.from_dict(values[name])
        return cls(**values)


QUANTIZATION_MODES = ("int8", "fp8")
# Optional manifest sections parsed into their own types (the spec, required, is parsed above).
_SECTIONS: dict[str, Any] = {"quantization": Quantization, "defaults": ModelDefaults}


def _fields_of(cls: Any, data: Any, where: str | None) -> dict[str, Any]:
    """The values of ``cls``'s dataclass fields found in ``data``; ArtifactError when a required one is missing.
    Keys it does not know are ignored, so a manifest from a newer wanrt that only adds fields still loads."""
    label = f"{MANIFEST_NAME} {where}" if where else MANIFEST_NAME
    if not isinstance(data, dict):
        raise ArtifactError(f"{label} is not an object")
    fields = dataclasses.fields(cls)
    missing = [f.name for f in fields if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ArtifactError(f"{label} lacks {', '.join(missing)}")
    return {f.name: data[f.name] for f in fields if f.name in data}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so tens of GB of weights never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def hash_folder(art_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``art_dir`` except the manifest, keyed by POSIX relative path, sorted."""
    art_dir = Path(art_dir)
    return {rel: sha256_file(art_dir / rel) for rel in _listed_on_disk(art_dir)}


def write_manifest(art_dir: Path, manifest: Manifest) -> Path:
    """Writes ``manifest.json`` into ``art_dir`` and returns its path."""
    path = Path(art_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def load_artifact(art_dir: Path, *, verify_hashes: bool = True) -> Manifest:
    """Reads and checks an artifact folder; raises ArtifactError naming the first problem found.

    Checks: the manifest exists, parses and has a known format; every listed file is present (and, with
    ``verify_hashes``, unchanged); every graph's file is listed; no unlisted ONNX file lies in the folder.
    """
    from wanrt.engine.model_files import ModelFolder

    with ModelFolder(art_dir, strict=False) as folder:
        manifest, _ = open_artifact(folder)
        if verify_hashes:
            for rel, expected in manifest.files.items():
                folder.digest(rel, expected, listed_in=MANIFEST_NAME)
    return manifest


def open_artifact(folder: ModelFolder, check: ManifestCheck | None = None) -> tuple[Manifest, str]:
    """The artifact's manifest, read once through ``folder`` (``check`` sees its bytes first), and their sha256.
    Checks what the manifest says against the folder (listed files present, no unlisted graph); the files'
    hashes are checked by whoever reads them (ModelFolder.read/digest)."""
    from wanrt.engine.manifest_file import parse_manifest
    from wanrt.engine.model_files import read_manifest_bytes

    raw = read_manifest_bytes(folder, MANIFEST_NAME, check,
                              not_found="not a wanrt artifact (make one with `wanrt export`)")
    data = parse_manifest(folder.where(MANIFEST_NAME), raw.tobytes(), format_version=FORMAT_VERSION,
                          outdated="re-export the model with this version")
    manifest = Manifest.from_dict(data)
    _check_files(folder, manifest)
    return manifest, raw.sha256


def _check_files(folder: ModelFolder, manifest: Manifest) -> None:
    where = folder.where(MANIFEST_NAME)
    for rel in manifest.files:
        # A manifest must not point outside its folder (absolute paths, "..").
        parts = PurePosixPath(rel)
        if parts.is_absolute() or ".." in parts.parts or rel == MANIFEST_NAME:
            raise ArtifactError(f"{where} lists an invalid path {rel!r}")
    for name, graph in manifest.graphs.items():
        for file in referenced_files(graph):
            if file not in manifest.files:
                raise ArtifactError(f"{where}: graph {name!r} file {file!r} is not listed in files")
    for rel in manifest.files:
        if not folder.exists(rel):
            raise ArtifactError(f"{folder.where(rel)} is listed in {MANIFEST_NAME} but missing")
    for rel in folder.files():
        if rel.endswith(_MODEL_SUFFIXES) and rel not in manifest.files:
            raise ArtifactError(f"{folder.where(rel)} is not listed in {MANIFEST_NAME}: remove it or re-export")


def _listed_on_disk(art_dir: Path) -> list[str]:
    return sorted(p.relative_to(art_dir).as_posix() for p in art_dir.rglob("*")
                  if p.is_file() and p.relative_to(art_dir).as_posix() != MANIFEST_NAME)
