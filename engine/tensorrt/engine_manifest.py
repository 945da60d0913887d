"""``engines.json``: what a folder of TensorRT engines was built from, for which GPU, and how.

A serialized engine is only valid for the exact TensorRT version and GPU model that built it, and only
means something for the exact ONNX graph it came from. TensorRT itself detects some of this late and
vaguely (or, for a same-architecture GPU of another model, only warns), so the loader checks this record
first and refuses with an ArtifactError that names what differs and how to fix it.

Pure Python: reading, writing and checking need no TensorRT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

from wanrt.engine.artifact import Manifest
from wanrt.engine.manifest_file import parse_manifest, read_manifest
from wanrt.engine.request import Limits
from wanrt.engine.tensorrt.profiles import (
    GraphProfile,
    VideoShape,
    compute_profiles,
    limits_from_dict,
    limits_to_dict,
)
from wanrt.errors import ArtifactError, InvalidRequestError

ENGINES_MANIFEST = "engines.json"
# 2: strongly typed engines (precision from the graphs), user-managed memory, residency/weight streaming.
FORMAT_VERSION = 2
ENGINE_SUFFIX = ".plan"
REBUILD = "rebuild them with `wanrt build-engines`"


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
    """The TensorRT and GPU an engine is built for (or, at load time, that is present)."""

    tensorrt_version: str
    device_name: str
    compute_capability: str  # "major.minor", e.g. "9.0"

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class BuilderOptions:
    """Builder settings that change the engine (recorded so a rebuild can reproduce it)."""

    workspace_bytes: int | None = None  # None: TensorRT's default (the whole device)
    optimization_level: int = 3  # TensorRT's default; 4-5 search longer for faster kernels
    timing_cache: str | None = None  # reused across builds; speeds rebuilds, does not change results' meaning

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class MemoryOptions:
    """How the engines share the GPU (engine/tensorrt/memory.py): chosen at build time, applied at load."""

    residency: str | None = None  # resident, per-stage or streaming; None: the cheapest that fits
    weight_streaming_budget: int | None = None  # bytes of each expert's weights kept on the GPU
    text_encoder: str | None = None  # resident, release or cpu; None: the cheapest that fits

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class EngineEntry:
    """One engine file and what it was built from."""

    file: str
    sha256: str
    onnx_file: str
    onnx_sha256: str
    precision: str  # what the graph computes in: fp32, fp16, bf16, int8 or fp8, as its ONNX states it
    weight_streaming: bool  # built with BuilderFlag.WEIGHT_STREAMING (its weights can stay on the host)
    profiles: tuple[GraphProfile, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "onnx_file": self.onnx_file,
                "onnx_sha256": self.onnx_sha256, "precision": self.precision, "weight_streaming": self.weight_streaming,
                "profiles": [p.to_dict() for p in self.profiles]}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> EngineEntry:
        if not isinstance(data, dict):
            raise ArtifactError(f"{where} is not an object")
        for key in ("file", "sha256", "onnx_file", "onnx_sha256", "precision"):
            if not isinstance(data.get(key), str):
                raise ArtifactError(f"{where} lacks a string {key!r}")
        streaming, profiles = data.get("weight_streaming"), data.get("profiles")
        if not isinstance(streaming, bool):
            raise ArtifactError(f"{where}.weight_streaming must be true or false")
        if not isinstance(profiles, list) or not profiles:
            raise ArtifactError(f"{where}.profiles must be a non-empty list")
        parts = PurePosixPath(data["file"])
        if parts.is_absolute() or len(parts.parts) != 1:
            raise ArtifactError(f"{where}.file must be a plain file name, got {data['file']!r}")
        return cls(data["file"], data["sha256"], data["onnx_file"], data["onnx_sha256"], data["precision"],
                   streaming, tuple(GraphProfile.from_dict(p, f"{where}.profiles[{i}]")
                                       for i, p in enumerate(profiles)))


@dataclasses.dataclass(frozen=True)
class EnginesManifest:
    format_version: int
    artifact: dict[str, str]  # {"path": relative to the engines folder, "manifest_sha256": ...}
    runtime: RuntimeInfo
    precision: str  # the experts' precision (each engine records its own)
    limits: Limits  # the requests the profiles cover; the loader serves exactly these
    opt: VideoShape
    builder: BuilderOptions
    memory: MemoryOptions
    engines: dict[str, EngineEntry]  # graph name -> engine
    created_utc: str
    wanrt_version: str

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "artifact": dict(self.artifact),
                "runtime": self.runtime.to_dict(), "precision": self.precision,
                "limits": limits_to_dict(self.limits), "opt": dataclasses.asdict(self.opt),
                "builder": self.builder.to_dict(), "memory": self.memory.to_dict(),
                "engines": {k: e.to_dict() for k, e in self.engines.items()},
                "created_utc": self.created_utc, "wanrt_version": self.wanrt_version}

    @classmethod
    def from_dict(cls, data: Any) -> EnginesManifest:
        """Parses engines.json's content, whose format version read_engines_manifest (through the shared
        manifest reader) has already checked; ArtifactError naming the first missing or malformed field."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{ENGINES_MANIFEST} is not a JSON object")
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in fields if name not in data]
        if missing:
            raise ArtifactError(f"{ENGINES_MANIFEST} lacks {', '.join(missing)}")
        try:
            artifact = {k: str(data["artifact"][k]) for k in ("path", "manifest_sha256")}
            runtime = RuntimeInfo(**{f.name: str(data["runtime"][f.name]) for f in dataclasses.fields(RuntimeInfo)})
            opt = VideoShape(**{f.name: int(data["opt"][f.name]) for f in dataclasses.fields(VideoShape)})
            builder = BuilderOptions(**data["builder"])
            memory = MemoryOptions(**data["memory"])
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{ENGINES_MANIFEST} is malformed: {err!r}") from None
        if not isinstance(data["engines"], dict) or not data["engines"]:
            raise ArtifactError(f"{ENGINES_MANIFEST}: engines must be a non-empty object")
        engines = {str(k): EngineEntry.from_dict(v, f"{ENGINES_MANIFEST} engines.{k}")
                   for k, v in data["engines"].items()}
        return cls(FORMAT_VERSION, artifact, runtime, str(data["precision"]),
                   limits_from_dict(data["limits"], f"{ENGINES_MANIFEST} limits"), opt, builder, memory, engines,
                   str(data["created_utc"]), str(data["wanrt_version"]))


def write_engines_manifest(engines_dir: Path, manifest: EnginesManifest) -> Path:
    path = Path(engines_dir) / ENGINES_MANIFEST
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


ENGINES_NOT_FOUND = "not a folder of wanrt TensorRT engines (make one with `wanrt build-engines`)"


def read_engines_manifest(engines_dir: Path) -> EnginesManifest:
    """Reads ``engines_dir/engines.json``; ArtifactError when it is missing or malformed."""
    data = read_manifest(Path(engines_dir), ENGINES_MANIFEST, format_version=FORMAT_VERSION,
                         not_found=ENGINES_NOT_FOUND, outdated=REBUILD)
    return EnginesManifest.from_dict(data)


def parse_engines_manifest(path: Path, data: bytes) -> EnginesManifest:
    """engines.json's exact bytes (as read and checked once), parsed."""
    return EnginesManifest.from_dict(parse_manifest(path, data, format_version=FORMAT_VERSION, outdated=REBUILD))


def artifact_dir(engines_dir: Path, manifest: EnginesManifest) -> Path:
    """The artifact the engines were built from. The path is stored relative to the engines folder so the two
    can move together (a container mounts them elsewhere than the build machine had them)."""
    path = Path(engines_dir) / manifest.artifact["path"]
    if not path.is_dir():
        raise ArtifactError(f"{ENGINES_MANIFEST} in {engines_dir} was built from the artifact at "
                            f"{manifest.artifact['path']!r} (relative to it), which is not a directory here: keep "
                            "the artifact and the engines folder at the same relative place")
    return path


def check_artifact(manifest: EnginesManifest, artifact: Manifest) -> None:
    """Refuses engines not built from exactly this artifact's ONNX graphs, or whose profiles were edited.

    The manifest's own hash is not compared: re-exporting the same graphs (new timestamp) keeps engines valid.
    """
    for graph, entry in artifact.graphs.items():
        engine = manifest.engines.get(graph)
        if engine is None:
            raise ArtifactError(f"{ENGINES_MANIFEST} has no engine for graph {graph!r} ({REBUILD})")
        expected = artifact.files.get(entry["file"])
        if engine.onnx_file != entry["file"] or engine.onnx_sha256 != expected:
            raise ArtifactError(f"engine {engine.file} was built from {engine.onnx_file} with sha256 "
                                f"{engine.onnx_sha256}, but the artifact's {entry['file']} has sha256 {expected}: "
                                f"the model was re-exported since ({REBUILD})")
    extra = sorted(manifest.engines.keys() - artifact.graphs.keys())
    if extra:
        raise ArtifactError(f"{ENGINES_MANIFEST} has engines for graphs the artifact lacks: {', '.join(extra)}")
    try:
        expected_profiles = compute_profiles(artifact, manifest.limits, manifest.opt)
    except InvalidRequestError as err:
        raise ArtifactError(f"{ENGINES_MANIFEST} limits do not fit the artifact: {err}") from None
    for graph, engine in manifest.engines.items():
        # Profiles follow from limits + artifact; a mismatch means the file was edited or built by another wanrt,
        # and the engine would accept other shapes than the loader would then allow.
        if engine.profiles != (expected_profiles[graph],):
            raise ArtifactError(f"engine {engine.file}: recorded profile differs from the one its limits give "
                                f"({ENGINES_MANIFEST} was edited, or written by another wanrt; {REBUILD})")


def check_runtime(manifest: EnginesManifest, runtime: RuntimeInfo) -> None:
    """Refuses engines built by another TensorRT version or for another GPU model."""
    built = manifest.runtime
    if built.tensorrt_version != runtime.tensorrt_version:
        raise ArtifactError(f"the engines were built with TensorRT {built.tensorrt_version}, this is TensorRT "
                            f"{runtime.tensorrt_version}; serialized engines only load in the version that built "
                            f"them ({REBUILD})")
    if built.compute_capability != runtime.compute_capability:
        raise ArtifactError(f"the engines were built for compute capability {built.compute_capability} "
                            f"({built.device_name}); this GPU, {runtime.device_name}, is "
                            f"{runtime.compute_capability} ({REBUILD} on this GPU)")
    if built.device_name != runtime.device_name:
        raise ArtifactError(f"the engines were built on a {built.device_name}; this GPU is a {runtime.device_name}: "
                            f"TensorRT engines are specific to the GPU model ({REBUILD} on this GPU)")


def verify_engine_bytes(path: Path, entry: EngineEntry, data: bytes) -> None:
    """Hashes the bytes about to be deserialized (read once for both), refusing a changed or truncated file."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry.sha256:
        raise ArtifactError(f"{path} does not match {ENGINES_MANIFEST} (sha256 {actual}, expected {entry.sha256}): "
                            f"the engine file changed after it was built ({REBUILD})")

