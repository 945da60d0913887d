"""Video output: H.264 in MP4 through PyAV (streamable fragments), or raw uint8 frames as .npy."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

# Fragmented MP4, one fragment per frame, and x264 without lookahead (zerolatency): every frame's bytes can
# leave (over gRPC) as soon as the VAE decoder has produced it; players and PyAV read it like any MP4.
_MOVFLAGS = "frag_every_frame+empty_moov+default_base_moof"
METADATA_TAG = "comment"  # an iTunes-style tag ffmpeg writes into the moov and every MP4 reader lists


class _Sink(io.RawIOBase):
    """A write-only file for PyAV that hands out what was written since the last drain."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._chunks.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out, self._chunks = b"".join(self._chunks), []
        return out


def encode_mp4(chunks: Iterable[np.ndarray], fps: int, *, crf: int = 18,
               metadata: dict[str, Any] | None = None) -> Iterator[bytes]:
    """Encodes (T, H, W, 3) uint8 chunks to H.264/MP4 and yields the file's bytes as they are produced.
    ``metadata`` (what made the clip) goes into the file's ``comment`` tag as JSON (read_mp4_metadata)."""
    import av

    sink = _Sink()
    container = av.open(sink, mode="w", format="mp4", options={"movflags": _MOVFLAGS})
    if metadata is not None:
        container.metadata[METADATA_TAG] = json.dumps(metadata, sort_keys=True, separators=(",", ":"))
    try:
        stream = None
        for chunk in chunks:
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.height, stream.width = chunk.shape[1], chunk.shape[2]
                stream.pix_fmt = "yuv420p"
                # One thread: the encoded bytes (and so the clip's sha256) do not depend on the machine.
                stream.codec_context.options = {"crf": str(crf), "threads": "1", "tune": "zerolatency"}
            for frame in chunk:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    container.mux(packet)
            yield sink.drain()
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    finally:
        container.close()
    yield sink.drain()


def write_video(path: Path, chunks: Iterable[np.ndarray], fps: int, *,
                metadata: dict[str, Any] | None = None) -> Path:
    """Writes ``.mp4`` or ``.npy`` (uint8, (F, H, W, 3)) atomically: a failed run leaves no partial file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".npy"):
        raise ValueError(f"output must end in .mp4 or .npy, got {path.name!r}")
    partial = path.with_name(f".{path.name}.partial")
    try:
        if suffix == ".mp4":
            with open(partial, "wb") as out:
                for data in encode_mp4(chunks, fps, metadata=metadata):
                    out.write(data)
        else:
            frames = np.concatenate(list(chunks))
            with open(partial, "wb") as out:
                np.save(out, frames)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_mp4_frames(path_or_bytes: Path | bytes) -> np.ndarray:
    """Decodes an MP4 back to (F, H, W, 3) uint8 (used to check what was written)."""
    import av

    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    with av.open(source) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def read_mp4_metadata(path_or_bytes: Path | bytes) -> dict[str, Any] | None:
    """The settings ``encode_mp4`` wrote into a clip, or None when it carries none."""
    import av

    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    with av.open(source) as container:
        text = container.metadata.get(METADATA_TAG)
    return None if text is None else json.loads(text)
