"""Shared accuracy measures: network outputs against a reference (two relative errors, cosine) and clips against
a reference clip (PSNR, SSIM). Export's parity gate, quantization's report, `wanrt verify` and the quality gate all
measure with these, so a number means the same thing in every report."""

from __future__ import annotations

import numpy as np

PSNR_CAP_DB = 100.0  # identical clips: a finite number JSON can hold


def norm_relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """||actual - reference|| / ||reference|| (L2 over the whole tensor): the error's share of the signal, an
    average over every element; what quantization's report and the TensorRT comparison give."""
    a, r = actual.astype(np.float64), reference.astype(np.float64)
    return float(np.linalg.norm(a - r) / max(np.linalg.norm(r), 1e-30))


def max_relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's largest magnitude (scale-free, no 0/0): the worst
    element, which export's parity gate bounds (1e-4 at fp32)."""
    if not reference.size:
        return 0.0
    scale = float(np.max(np.abs(reference)))
    diff = float(np.max(np.abs(actual.astype(np.float64) - reference.astype(np.float64))))
    return diff / max(scale, 1e-12)


def cosine(actual: np.ndarray, reference: np.ndarray) -> float:
    a, r = actual.astype(np.float64).ravel(), reference.astype(np.float64).ravel()
    return float(a @ r / max(np.linalg.norm(a) * np.linalg.norm(r), 1e-30))


def psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of uint8 clips over every pixel of every frame (capped at PSNR_CAP_DB)."""
    mse = float(np.mean((frames.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10.0 * np.log10(255.0**2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _filter(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of (..., H, W) images."""
    k = len(window)
    h, w = image.shape[-2:]
    rows = sum(window[i] * image[..., i : h - k + 1 + i, :] for i in range(k))
    return sum(window[i] * rows[..., :, i : w - k + 1 + i] for i in range(k))


def ssim(frames: np.ndarray, reference: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5) of the luma of (T, H, W, 3) uint8 clips."""
    luma = np.array([0.299, 0.587, 0.114])
    x, y = frames.astype(np.float64) @ luma, reference.astype(np.float64) @ luma
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    win = _gaussian_window(min(11, *x.shape[-2:]))
    mx, my = _filter(x, win), _filter(y, win)
    sxx = _filter(x * x, win) - mx * mx
    syy = _filter(y * y, win) - my * my
    sxy = _filter(x * y, win) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())
