"""Flow matching as the reef experts learn it: the scheduler's sigma shift, the expert boundary, the loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

BOUNDARY_RATIO = 0.875  # Wan2.2-A14B's switch between the high- and low-noise experts


def shifted_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The scheduler's time shift: uniform u -> sigma, so training sees noise levels as sampling visits them."""
    return shift * u / (1 + (shift - 1) * u)


def boundary_u(shift: float, boundary: float = BOUNDARY_RATIO) -> float:
    """The u whose shifted sigma is the expert boundary (0.7 for shift 3 and boundary 0.875)."""
    return boundary / (shift - (shift - 1) * boundary)


def flow_matching_loss(expert: torch.nn.Module, context: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
                       noise: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between the expert's velocity and noise - x0 at x_t = (1 - sigma) x0 + sigma noise, t = 1000 sigma;
    with ``weight`` (broadcast to x0), the weighted mean of the squared error."""
    s = sigma.view(-1, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    pred = expert(hidden_states=x_t, timestep=sigma * 1000, encoder_hidden_states=context, return_dict=False)[0]
    if weight is None:
        return F.mse_loss(pred, noise - x0)
    weight = weight.expand_as(x0)
    return (weight * (pred - (noise - x0)).square()).sum() / weight.sum()


def subject_cell_weights(latents: torch.Tensor, water: torch.Tensor, strength: float) -> torch.Tensor:
    """(N, 1, T, H, W) loss weights from normalised latents of clips and of the same clips without their subject:
    1 where the subject is absent, up to 1 + ``strength`` in the cell it fills most."""
    energy = (latents - water).square().sum(dim=1, keepdim=True)
    peak = energy.amax(dim=(2, 3, 4), keepdim=True).clamp(min=1e-6)
    return 1 + strength * energy / peak

