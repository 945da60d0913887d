"""The reef latent space: a whitened block PCA of pixel blocks, laid out as Wan's VAE lays out its latents.

numpy only: the analysis tools (``latent_check``) use it without torch; the trainer turns its arrays into
tensors where it needs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BASIS_FILE = "reef_latent_basis.npz"  # beside the VAE weights of a folder the trainer wrote (vae/)


class BlockPCA:
    """The latent space: whitened principal components of each latent cell's pixel block.

    Wan's VAE maps frame 0 alone, then every 4 frames, to one latent frame, and 8x8 pixels to one latent cell.
    Here a cell's latent is the top-16 PCA projection of its block (8x8x3 for frame 0, 4x8x8x3 after),
    divided by the components' standard deviations: well conditioned by construction (unit variance,
    uncorrelated channels) and, on these scenes, >99% of the pixel variance. The Wan decoder is trained to
    invert it; the Wan encoder is not needed for text-to-video and stays as initialised (see reef/README.md).
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    @staticmethod
    def _blocks(video: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, T, H, W, 3) in [-1, 1] -> frame-0 blocks (N, h, w, 192), later blocks (N, T', h, w, 768)."""
        n, t, h, w, _ = video.shape
        first = video[:, 0].reshape(n, h // 8, 8, w // 8, 8, 3).transpose(0, 1, 3, 2, 4, 5)
        first = first.reshape(n, h // 8, w // 8, -1)
        if t == 1:
            return first, None
        rest = video[:, 1:].reshape(n, (t - 1) // 4, 4, h // 8, 8, w // 8, 8, 3).transpose(0, 1, 3, 5, 2, 4, 6, 7)
        return first, rest.reshape(n, (t - 1) // 4, h // 8, w // 8, -1)

    @classmethod
    def fit(cls, clips: np.ndarray, channels: int = 16) -> BlockPCA:
        first, rest = cls._blocks(clips.astype(np.float32) / 127.5 - 1)
        arrays = {}
        for name, data in (("first", first), ("rest", rest)):
            data = data.reshape(-1, data.shape[-1]).astype(np.float64)
            mean = data.mean(axis=0)
            values, vectors = np.linalg.eigh(np.cov((data - mean).T))
            top = np.argsort(values)[::-1][:channels]
            arrays[f"{name}_mean"] = mean.astype(np.float32)
            arrays[f"{name}_basis"] = vectors[:, top].astype(np.float32)
            arrays[f"{name}_scale"] = np.sqrt(np.maximum(values[top], 1e-8)).astype(np.float32)
            arrays[f"{name}_explained"] = np.array(values[top].sum() / values.sum(), np.float32)
        return cls(arrays)

    def encode(self, clips: np.ndarray) -> np.ndarray:
        """(N, T, H, W, 3) uint8 -> (N, 16, 1 + (T - 1) / 4, H / 8, W / 8) float32."""
        a = self.arrays
        first, rest = self._blocks(clips.astype(np.float32) / 127.5 - 1)
        z = [((first - a["first_mean"]) @ a["first_basis"] / a["first_scale"])[:, None]]
        if rest is not None:
            z.append((rest - a["rest_mean"]) @ a["rest_basis"] / a["rest_scale"])
        return np.ascontiguousarray(np.concatenate(z, axis=1).transpose(0, 4, 1, 2, 3))

    def project(self, clips: np.ndarray) -> np.ndarray:
        """(N, T, H, W, 3) uint8 -> the clips as the latent space keeps them, in [-1, 1] units (unclipped):
        every block projected onto its components. The Wan decoder is trained towards this."""
        a = self.arrays
        n, t, h, w, _ = clips.shape
        first, rest = self._blocks(clips.astype(np.float32) / 127.5 - 1)

        def keep(blocks: np.ndarray, name: str) -> np.ndarray:
            basis, mean = a[f"{name}_basis"], a[f"{name}_mean"]
            return (blocks - mean) @ basis @ basis.T + mean

        frames = [keep(first, "first").reshape(n, 1, h // 8, w // 8, 8, 8, 3)]
        if rest is not None:
            kept = keep(rest, "rest").reshape(n, (t - 1) // 4, h // 8, w // 8, 4, 8, 8, 3)
            frames.append(kept.transpose(0, 1, 4, 2, 3, 5, 6, 7).reshape(n, t - 1, h // 8, w // 8, 8, 8, 3))
        video = np.concatenate(frames, axis=1)  # (N, T, h, w, 8, 8, 3): blocks back into frames
        return video.transpose(0, 1, 2, 4, 3, 5, 6).reshape(n, t, h, w, 3)

    def save(self, path: Path) -> None:
        np.savez(path, **self.arrays)

    @classmethod
    def load(cls, model_dir: Path) -> BlockPCA:
        """The basis saved beside the VAE of a folder ``python -m wanrt.reef.train`` wrote."""
        path = Path(model_dir) / "vae" / BASIS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: not a folder written by python -m wanrt.reef.train")
        with np.load(path) as arrays:
            return cls(dict(arrays))

