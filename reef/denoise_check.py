"""At which noise level the experts lose what a prompt asked for: denoising that starts from the true clip.

    python -m wanrt.reef.denoise_check --model DIR [--prompts 25] [--start 0.83 0.5 0.3]

DIR is a folder written by `python -m wanrt.reef.train`. For every held-out prompt of `wanrt eval`, the
renderer's clip of the same attributes is encoded into the model's latent space, noised to sigma ``s`` with the
case's seed, and denoised from there by the model's experts (guidance 4, Euler steps on the scheduler's shifted
8-step grid). Sigma 1 is ordinary generation; the lower ``s``, the more of the true layout the experts are
given. The probes then read the motion. Where a subject's motion survives a start at sigma 0.3 but not at 0.8,
the experts draw it only when told where it is: the model, not the latent space, loses it
(``latent_check`` measures the latent space).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wanrt.engine.pipeline import to_uint8_frames
from wanrt.evaluate.eval import EvalCase, heldout_cases, score_clip
from wanrt.evaluate.probes import Probes
from wanrt.reef.flow import BOUNDARY_RATIO, shifted_sigmas
from wanrt.reef.latent_basis import BlockPCA
from wanrt.reef.renderer import render_clip

STEPS = 8
GUIDANCE = 4.0


class TrueStartSampler:
    """A diffusers WanPipeline folder's experts, denoising a rendered clip's latents from a chosen noise level."""

    def __init__(self, model_dir: Path) -> None:
        from diffusers import WanPipeline

        self.pipe = WanPipeline.from_pretrained(model_dir)
        self.pca = BlockPCA.load(model_dir)
        config = self.pipe.vae.config
        self.mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
        self.sigmas = shifted_sigmas(torch.linspace(1, 0, STEPS + 1), float(self.pipe.scheduler.config.flow_shift))

    def grid_index(self, start: float) -> int:
        """The step of the 8-step grid whose sigma is nearest ``start``."""
        return int(torch.argmin((self.sigmas[:-1] - start).abs()))

    def _velocity(self, x: torch.Tensor, sigma: float, context: torch.Tensor) -> torch.Tensor:
        expert = self.pipe.transformer if sigma >= BOUNDARY_RATIO else self.pipe.transformer_2
        both = expert(hidden_states=torch.cat([x, x]), timestep=torch.tensor([sigma * 1000] * 2),
                      encoder_hidden_states=context, return_dict=False)[0]
        return both[1:] + GUIDANCE * (both[:1] - both[1:])

    @torch.no_grad()
    def clip(self, case: EvalCase, start: float, frames: int = 17, size: int = 96) -> np.ndarray:
        """(T, H, W, 3) uint8: the case's true clip, noised to the grid sigma nearest ``start`` and denoised."""
        cond, uncond = self.pipe.encode_prompt(case.prompt, negative_prompt="", do_classifier_free_guidance=True,
                                               max_sequence_length=512)[:2]
        truth = render_clip(case.attrs, frames=frames, height=size, width=size, seed=case.seed)
        x0 = (torch.from_numpy(self.pca.encode(truth[None])) - self.mean) / self.std
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(case.seed))
        first = self.grid_index(start)
        sigma = self.sigmas[first]
        x = (1 - sigma) * x0 + sigma * noise
        for k in range(first, STEPS):
            x = x + (self.sigmas[k + 1] - self.sigmas[k]) * self._velocity(x, float(self.sigmas[k]),
                                                                          torch.cat([cond, uncond]))
        return to_uint8_frames(self.pipe.vae.decode(x * self.std + self.mean, return_dict=False)[0].numpy())


def motion_by_start(sampler: TrueStartSampler, cases: list[EvalCase], starts: list[float],
                    probes: Probes) -> dict[str, Any]:
    """Motion accuracy for each start sigma, overall and by subject."""
    found: dict[float, list[bool]] = {s: [] for s in starts}
    for case in cases:
        for start in starts:
            found[start].append(bool(score_clip(probes, sampler.clip(case, start), case.attrs)["motion"]["correct"]))
    subjects = sorted({c.attrs.subject for c in cases})
    return {f"{float(sampler.sigmas[sampler.grid_index(s)]):.2f}": {
        "motion": float(np.mean(found[s])),
        "by_subject": {subj: [sum(ok for ok, c in zip(found[s], cases, strict=True) if c.attrs.subject == subj),
                              sum(c.attrs.subject == subj for c in cases)] for subj in subjects}}
        for s in starts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanrt.reef.denoise_check", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a folder written by python -m wanrt.reef.train")
    parser.add_argument("--prompts", type=int, default=25, help="held-out prompts (wanrt eval's, same seeds)")
    parser.add_argument("--start", type=float, nargs="+", default=[1.0, 0.83, 0.64, 0.5, 0.3],
                        help="noise levels to start from (each snaps to the nearest sigma of the 8-step grid)")
    args = parser.parse_args(argv)
    report = motion_by_start(TrueStartSampler(args.model), heldout_cases(args.prompts), args.start, Probes.load())
    print(f"motion accuracy, denoising from the true clip ({args.prompts} held-out prompts):")
    for sigma, row in report.items():
        subjects = ", ".join(f"{s} {ok}/{n}" for s, (ok, n) in row["by_subject"].items())
        print(f"  from sigma {sigma}: {row['motion']:4.0%}  ({subjects})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
