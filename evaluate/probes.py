"""Probes that read a clip's attributes back from its frames: motion direction, palette and subject.

They only need numpy, so `wanrt eval` runs on the serving install. Motion is measured, not learned: the
displacement that best aligns frames a few steps apart, after the static background is removed. Palette and
subject are small softmax classifiers on colour and texture statistics, fitted to the renderer's own clips
(`python -m wanrt.evaluate.probes --out evaluate/probes.npz`) and shipped as a few kB of weights.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from wanrt.reef.renderer import PALETTES, SUBJECTS, render_clip, sample_attributes

DEFAULT_WEIGHTS = Path(__file__).with_name("probes.npz")
MAX_LAG = 8  # motion is matched between frames MIN_LAG..MAX_LAG apart (one to two latent frames of Wan's VAE)
# Pulses, wing beats and wiggles repeat within ~8 frames and cancel over these lags; travel adds up.
MIN_LAG = 4
DETAIL_DIV = 8
# Below this speed (fraction of the frame width per frame) a clip counts as still. The renderer's slow speed
# is 0.0125: the threshold sits between it and the jitter of "still" subjects.
STILL_SPEED = 0.005


# --- small image helpers ---------------------------------------------------------------------------------

def _float_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    return frames.astype(np.float32) / (255.0 if frames.dtype == np.uint8 else 1.0)


def _box_blur(img: np.ndarray, radius: int, axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
    """Mean over a (2r+1)^2 window with edge padding, via cumulative sums (no scipy)."""
    if radius <= 0:
        return img
    out = img
    for axis in axes:
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius + 1, radius)
        c = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis)
        n = out.shape[axis]
        hi = np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
        lo = np.take(c, np.arange(0, n), axis=axis)
        out = (hi - lo) / (2 * radius + 1)
    return out


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames @ np.array([0.299, 0.587, 0.114], np.float32)


# --- motion ----------------------------------------------------------------------------------------------

def _detail(frames: np.ndarray) -> np.ndarray:
    """High-passed luma: light gradients and glow flicker are smooth and drop out, edges of things stay."""
    luma = _luma(_float_frames(frames))
    radius = max(2, luma.shape[2] // DETAIL_DIV)
    detail = _box_blur(luma - _box_blur(luma, radius), 1)
    # The border's blur sees padding, not the scene: a static false edge there, so drop it.
    return detail[:, radius + 1:-radius - 1, radius + 1:-radius - 1]


def motion_velocity(frames: np.ndarray, max_lag: int = MAX_LAG) -> tuple[float, float, float]:
    """Dominant (dx, dy) per frame, in fractions of the frame width (y down), of a (T, H, W, 3) clip, and its
    score (mean normalised correlation, up to 1).

    The temporal median of the detail (whatever does not move: beams, vent, silt) is removed, leaving the
    moving content. A constant velocity v must then carry frame t onto frame t + L by v * L for every lag L;
    summing each lag's normalised cross-correlation at v * L rewards exactly that. A still subject that
    pulses or flaps also leaves a residual, but its best "velocity" is zero: at small lags it matches itself
    in place, and its changes do not line up along any one direction across lags.
    """
    width = np.asarray(frames).shape[2]  # velocities are fractions of the whole frame, not the cropped detail
    detail = _detail(frames)
    t, h, w = detail.shape
    moving = detail
    spec = np.fft.rfft2(moving, s=(2 * h, 2 * w))  # zero-padded: shifts do not wrap around
    energy = (moving**2).sum(axis=(1, 2))
    # Candidate velocities in pixels per frame; the renderer's fastest subject moves ~4 px/frame at 96 px.
    steps = int(np.ceil(0.045 * width / 0.25))
    grid = np.arange(-steps, steps + 1) * 0.25  # symmetric: zero is the middle entry
    vx, vy = np.meshgrid(grid, grid)
    score = np.zeros_like(vx)
    lags = range(min(MIN_LAG, t - 1), max(2, min(max_lag, t - 1) + 1))
    for lag in lags:
        corr = np.fft.irfft2((spec[lag:] * np.conj(spec[:-lag])).sum(axis=0), s=(2 * h, 2 * w))
        norm = np.sqrt(energy[lag:].sum() * energy[:-lag].sum()) + 1e-12
        # Index (dy, dx) of the zero-padded correlation; negative shifts wrap to the end, as FFT lays them out.
        score += corr[np.round(vy * lag).astype(int) % (2 * h), np.round(vx * lag).astype(int) % (2 * w)] / norm
    score /= len(lags)
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)
    zero = score[len(grid) // 2, len(grid) // 2]
    return float(vx[iy, ix]) / width, float(vy[iy, ix]) / width, float(score[iy, ix]), float(zero)


def motion_direction(frames: np.ndarray) -> str:
    """One of MOTIONS: "still" below STILL_SPEED, else the axis and sign of the larger velocity component."""
    dx, dy, _, _ = motion_velocity(frames)
    if max(abs(dx), abs(dy)) < STILL_SPEED:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


# --- palette and subject features ------------------------------------------------------------------------

def palette_features(frames: np.ndarray) -> np.ndarray:
    """Mean colour of five horizontal bands, plus brightness spread across columns (sunbeams) and the
    bottom band's red excess (vent glow): light and colour, not what is in the water."""
    f = _float_frames(frames)
    bands = np.array_split(f, 5, axis=1)
    means = np.concatenate([b.mean(axis=(0, 1, 2)) for b in bands])
    top = _luma(bands[0]).mean(axis=(0, 1))
    columns = np.array([top.std() / (top.mean() + 0.05)])
    bottom = bands[-1].mean(axis=(0, 1, 2))
    red = np.array([bottom[0] - bottom[2], bottom[0] / (bottom.sum() + 0.05)])
    return np.concatenate([means, np.sqrt(means), columns, red]).astype(np.float32)


def subject_features(frames: np.ndarray) -> np.ndarray:
    """Texture, contrast, colour and rhythm of what moves or stands out, independent of where it is."""
    f = _float_frames(frames)
    luma = _luma(f)
    t, h, w = luma.shape
    detail = luma - _box_blur(luma, max(2, w // 16))  # local contrast: objects against the water
    # Radial spectrum of the detail: small specks put energy at high frequencies, a turtle at low ones.
    power = np.abs(np.fft.rfft2(detail)) ** 2
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    edges = np.array([0.0, 0.04, 0.08, 0.13, 0.2, 0.3, 0.75])
    band = np.array([power[:, (radius >= lo) & (radius < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:],
                                                                                     strict=True)])
    band_share = band / (band.sum() + 1e-9)
    mag = np.abs(detail)
    level = mag.mean()
    strong = mag > 3 * level + 0.01
    bright = (detail > 3 * level + 0.01).mean()
    dark = (detail < -(3 * level + 0.01)).mean()
    # Colour of the standout pixels relative to the frame's mean colour.
    weights = mag[..., None]
    obj = (f * weights).sum(axis=(0, 1, 2)) / (weights.sum() + 1e-6)
    rel = obj - f.mean(axis=(0, 1, 2))
    # Rhythm: how much the amount of detail pulses from frame to frame (jellyfish, flippers, wings).
    per_frame = mag.mean(axis=(1, 2))
    pulse = per_frame.std() / (per_frame.mean() + 1e-6)
    # Blob count proxy: local maxima of the smoothed detail magnitude above the noise.
    sm = _box_blur(mag, 1)
    peak = (sm == _max_filter(sm)) & (sm > 4 * level + 0.01)
    blobs = peak.sum(axis=(1, 2)).mean()
    moving = np.abs(luma - np.median(luma, axis=0, keepdims=True)).mean()
    return np.concatenate([np.log(band_share + 1e-6), [np.log(level + 1e-4), strong.mean(), bright, dark, pulse,
                                                       np.log1p(blobs), np.log(moving + 1e-4)], rel,
                           rel / (np.abs(rel).sum() + 0.02)]).astype(np.float32)


def _max_filter(img: np.ndarray) -> np.ndarray:
    """3x3 maximum over the last two axes."""
    p = np.pad(img, [(0, 0)] * (img.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    h, w = img.shape[-2:]
    return np.max(np.stack([p[..., i:i + h, j:j + w] for i in range(3) for j in range(3)]), axis=0)


# --- classifiers -----------------------------------------------------------------------------------------

@dataclasses.dataclass
class LinearProbe:
    """Softmax regression on standardised features."""

    classes: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray  # (features, classes)
    bias: np.ndarray

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((np.atleast_2d(features) - self.mean) / self.scale) @ self.weight + self.bias

    def predict(self, features: np.ndarray) -> list[str]:
        return [self.classes[i] for i in np.argmax(self.logits(features), axis=1)]

    @classmethod
    def fit(cls, features: np.ndarray, labels: list[str], classes: tuple[str, ...], *, l2: float = 1e-3,
            steps: int = 3000, lr: float = 0.5) -> LinearProbe:
        """Full-batch gradient descent on the cross-entropy; deterministic (zero init)."""
        x = np.asarray(features, np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        x = (x - mean) / scale
        y = np.zeros((len(labels), len(classes)))
        y[np.arange(len(labels)), [classes.index(v) for v in labels]] = 1
        weight = np.zeros((x.shape[1], len(classes)))
        bias = np.zeros(len(classes))
        for _ in range(steps):
            z = x @ weight + bias
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            g = (p - y) / len(x)
            weight -= lr * (x.T @ g + l2 * weight)
            bias -= lr * g.sum(axis=0)
        return cls(classes, mean.astype(np.float32), scale.astype(np.float32), weight.astype(np.float32),
                   bias.astype(np.float32))


@dataclasses.dataclass
class Probes:
    palette: LinearProbe
    subject: LinearProbe

    def classify(self, frames: np.ndarray) -> dict[str, str]:
        """Attributes read from a (T, H, W, 3) clip: motion, palette and subject."""
        return {"motion": motion_direction(frames),
                "palette": self.palette.predict(palette_features(frames))[0],
                "subject": self.subject.predict(subject_features(frames))[0]}

    def save(self, path: Path) -> None:
        arrays = {}
        for name in ("palette", "subject"):
            probe: LinearProbe = getattr(self, name)
            arrays.update({f"{name}_classes": np.array(probe.classes), f"{name}_mean": probe.mean,
                           f"{name}_scale": probe.scale, f"{name}_weight": probe.weight,
                           f"{name}_bias": probe.bias})
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path = DEFAULT_WEIGHTS) -> Probes:
        with np.load(path, allow_pickle=False) as data:
            def probe(name: str) -> LinearProbe:
                return LinearProbe(tuple(str(c) for c in data[f"{name}_classes"]), data[f"{name}_mean"],
                                   data[f"{name}_scale"], data[f"{name}_weight"], data[f"{name}_bias"])
            return cls(probe("palette"), probe("subject"))


def degrade(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur and noise like a small generator's output, so the probes do not rely on crisp pixels."""
    f = _float_frames(frames)
    radius = int(rng.integers(0, 3))
    f = _box_blur(f, radius, axes=(1, 2)) if radius else f
    f = f + rng.normal(0, rng.uniform(0, 0.01), f.shape)
    return np.round(np.clip(f, 0, 1) * 255).astype(np.uint8)


def train_probes(clips: int = 900, seed: int = 0) -> Probes:
    """Fits the palette and subject probes on freshly rendered, partly degraded clips."""
    rng = np.random.default_rng(seed)
    pal_x, sub_x, pal_y, sub_y = [], [], [], []
    for i in range(clips):
        attrs = sample_attributes(rng)
        frames = render_clip(attrs, seed=int(rng.integers(2**31)))
        if i % 2:
            frames = degrade(frames, rng)
        pal_x.append(palette_features(frames))
        sub_x.append(subject_features(frames))
        pal_y.append(attrs.palette)
        sub_y.append(attrs.subject)
    return Probes(LinearProbe.fit(np.stack(pal_x), pal_y, PALETTES),
                  LinearProbe.fit(np.stack(sub_x), sub_y, SUBJECTS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fit the palette and subject probes on rendered clips")
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--clips", type=int, default=900)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train_probes(args.clips, args.seed).save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
