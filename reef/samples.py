"""A contact sheet of sample clips (first, middle and last frame of each) for the README.

    python -m wanrt.reef.samples --out reef/contact_sheet.png [--model ART]

Each row is one prompt: the generated frames, then the renderer's clip of the same attributes for reference.
Written with zlib alone (no imaging library needed).
"""

from __future__ import annotations

import argparse
import struct
import zlib
from pathlib import Path

import numpy as np

from wanrt.reef.renderer import SceneAttributes, render_clip

# (prompt, the attributes it names): one English, one Chinese, one of each light.
SAMPLES = (
    ("A sea turtle swimming from left to right quickly in bright turquoise water.",
     SceneAttributes("turtle", "right", "fast", "turquoise")),
    ("一串气泡在海底热泉的红光中快速地向上升起。", SceneAttributes("bubbles", "up", "fast", "red_vent")),
    ("A manta ray moving left slowly under sunbeams from above.", SceneAttributes("ray", "left", "slow", "sunbeams")),
)


def write_png(path: Path, image: np.ndarray) -> None:
    """Writes an (H, W, 3) uint8 image as an 8-bit RGB PNG."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)


def contact_sheet(rows: list[list[np.ndarray]], scale: int = 2, gap: int = 4) -> np.ndarray:
    """Tiles rows of (H, W, 3) frames with white gaps, each pixel repeated ``scale`` times."""
    tiles = [[np.repeat(np.repeat(f, scale, 0), scale, 1) for f in row] for row in rows]
    h, w = tiles[0][0].shape[:2]
    cols = max(len(r) for r in tiles)
    sheet = np.full((len(tiles) * (h + gap) + gap, cols * (w + gap) + gap, 3), 255, np.uint8)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            y, x = gap + i * (h + gap), gap + j * (w + gap)
            sheet[y:y + h, x:x + w] = tile
    return sheet


def main(argv: list[str] | None = None) -> int:
    from wanrt.engine.loader import load_pipeline
    from wanrt.engine.request import GenerationRequest
    from wanrt.reef import default_model_dir

    parser = argparse.ArgumentParser(description="contact sheet of the reef model's sample clips")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None, help="artifact folder (default: the built-in model)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pipeline = load_pipeline(args.model or default_model_dir(), "onnxruntime")
    rows = []
    for prompt, attrs in SAMPLES:
        clip = np.concatenate(list(pipeline.generate(GenerationRequest(prompt=prompt, seed=args.seed))))
        truth = render_clip(attrs, frames=len(clip), height=clip.shape[1], width=clip.shape[2], seed=args.seed)
        picks = (0, len(clip) // 2, len(clip) - 1)
        rows.append([clip[i] for i in picks] + [truth[i] for i in picks])
        print(f"{prompt}", flush=True)
    write_png(args.out, contact_sheet(rows))
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
