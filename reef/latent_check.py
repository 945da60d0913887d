"""How much of each subject the reef latent space keeps: what the experts could draw at best.

    python -m wanrt.reef.latent_check --model DIR [--clips 12]

DIR is a folder written by `python -m wanrt.reef.train` (its `vae/reef_latent_basis.npz`). For every subject it
renders clips twice, with and without the subject (same water, light and grain), and projects both onto the
latent basis. The subject's detail is the difference of the two; the share of its energy that survives the
projection is what the Wan decoder can give back, whatever the experts learn. A subject far below 1 comes out
of any trained model as empty water.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wanrt.reef.latent_basis import BlockPCA
from wanrt.reef.renderer import MOTIONS, PALETTES, SUBJECTS, SceneAttributes, allowed_motions, render_clip


def detail_kept(pca: BlockPCA, attrs: SceneAttributes, seed: int, frames: int = 17, size: int = 96) -> float:
    """Share (0-1) of the subject's pixel detail in one clip that the latent basis keeps."""
    clip, water = (render_clip(attrs, frames=frames, height=size, width=size, seed=seed, subject=s)[None]
                   for s in (True, False))
    detail = clip.astype(np.float32) / 127.5 - water.astype(np.float32) / 127.5
    # The projection is affine with an orthonormal basis, so the kept detail is the projection of the detail.
    kept = pca.project(clip) - pca.project(water)
    return float((kept * kept).sum() / max(float((detail * detail).sum()), 1e-12))


def subject_report(pca: BlockPCA, clips: int = 12, seed: int = 0) -> dict[str, float]:
    """Mean share kept for each subject over ``clips`` clips of varied motion, speed and light."""
    rng = np.random.default_rng(seed)
    report = {}
    for subject in SUBJECTS:
        shares = []
        for i in range(clips):
            motions = allowed_motions(subject)
            attrs = SceneAttributes(subject, motions[i % len(motions)], ("slow", "fast")[i % 2],
                                    PALETTES[int(rng.integers(len(PALETTES)))])
            shares.append(detail_kept(pca, attrs, seed=int(rng.integers(2**31))))
        report[subject] = float(np.mean(shares))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanrt.reef.latent_check", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a folder written by python -m wanrt.reef.train")
    parser.add_argument("--clips", type=int, default=12, help="clips per subject")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = subject_report(BlockPCA.load(args.model), args.clips, args.seed)
    print(f"subject detail kept by the latent basis ({args.clips} clips each, motions {', '.join(MOTIONS)}):")
    for subject, share in report.items():
        print(f"  {subject:10s} {share:6.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
