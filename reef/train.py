"""Trains the reef model: a small Wan2.2-A14B-shaped text-to-video pipeline for the procedural underwater world.

    python -m wanrt.reef.train --out DIR --seed 0

Stages, reproducible from the seed (and --threads, default 2); with --device cuda the same seed draws the same
data, noise and prompts, but GPU kernels (attention's backward among them) do not promise bit-equal results:
1. tokenizer: word-level over the training prompts (English words, Chinese characters);
2. text encoder (UMT5): first taught to name a prompt's attributes (an auxiliary head, discarded), so the
   experts get an informative condition from their first step, then trained on with the flow loss;
3. VAE (AutoencoderKLWan, 4x temporal, 8x spatial, 16 channels): the latent space is a whitened block PCA
   (BlockPCA: well conditioned by construction) and the Wan decoder is trained to invert it, single frames
   first, then whole clips; the basis is saved next to the VAE weights;
4. latents of the training clips are cached, normalised per channel (the VAE config's latents_mean/std);
5. experts (WanTransformer3DModel): one model on all noise levels first, then split, as Wan2.2 grew its two
   experts out of one: `transformer` on sigma >= boundary (0.875), `transformer_2` below, each with an EMA,
   flow matching (x_t = (1 - s) x0 + s noise, target noise - x0), 10% empty prompts for CFG.
The result is a diffusers WanPipeline folder (save_pretrained) that `wanrt export` turns into an artifact.
`--init-from DIR` trains the experts of such a folder on (stage 5 alone, on fresh clips), so device time lent in
short leases adds up; reef_training.json then lists the runs the weights went through.

This module runs the stages in order and writes the folder. The pieces live by concern: ``config``
(TrainConfig and its presets), ``data`` (clips and prompts), ``networks`` (the models), ``latent_basis`` (the
block PCA), ``flow`` (sigmas, expert boundary, loss), ``stages`` (the training loops). The shipped model's runs
and their numbers are in reef/README.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from wanrt.engine.defaults import Recipe, write_recipe
from wanrt.reef.config import TrainConfig
from wanrt.reef.data import PromptBatcher, balanced_attributes, render_set
from wanrt.reef.flow import BOUNDARY_RATIO, subject_cell_weights
from wanrt.reef.latent_basis import BASIS_FILE, BlockPCA
from wanrt.reef.networks import AttributeHead, build_scheduler, build_text_encoder, build_vae
from wanrt.reef.stages import Log, train_experts, train_text_encoder, train_vae_decoder
from wanrt.reef.text import build_tokenizer


def load_trained(folder: Path, device: str) -> tuple[torch.nn.Module, torch.nn.Module, BlockPCA,
                                                     tuple[torch.nn.Module, torch.nn.Module]]:
    """Text encoder, VAE, latent basis and both experts of a folder this script wrote, to train on from."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    pca = BlockPCA.load(folder)
    text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder").to(device)
    vae = AutoencoderKLWan.from_pretrained(folder / "vae").to(device)
    experts = tuple(WanTransformer3DModel.from_pretrained(folder / name).to(device)
                    for name in ("transformer", "transformer_2"))
    return text_encoder, vae, pca, experts


def lineage(init_from: Path | None) -> list[dict[str, object]]:
    """The runs a model's weights went through, oldest first: each run's summary without its own lineage."""
    if init_from is None:
        return []
    record = Path(init_from) / "reef_training.json"
    if not record.is_file():
        raise FileNotFoundError(f"{record} is missing: a model trained on must say how it was made")
    summary = json.loads(record.read_text(encoding="utf-8"))
    earlier = summary.pop("init_from", [])
    return [*earlier, {"path": str(init_from), **summary}]


def train(out_dir: Path, cfg: TrainConfig, log: Log = print, device: str = "cpu",
          workers: int = 1, init_from: Path | None = None) -> dict[str, object]:
    """Runs every stage and writes a diffusers WanPipeline folder to ``out_dir``; returns the run summary.

    ``device`` runs the models there (see the module's note on reproducibility); ``workers`` processes render
    the clips and change no pixel. ``init_from`` (a folder this function wrote) trains its experts on: its
    tokenizer, text encoder, VAE and latent normalisation are kept, and fresh clips are drawn from ``cfg.seed``.
    """
    from diffusers import WanPipeline
    from transformers import AutoTokenizer

    history = lineage(init_from)  # before any work: a folder that cannot say how it was made is refused
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if str(device).startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores: these small models are otherwise slow
    gen = torch.Generator(device).manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[name] = round(now - clock, 1)
        clock = now
        log(f"== {name} done in {timings[name]:.0f}s")

    tok_dir = out_dir / "tokenizer"
    start = None
    if init_from is None:
        build_tokenizer(tok_dir)
    else:
        shutil.copytree(Path(init_from) / "tokenizer", tok_dir, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    batcher = PromptBatcher(tok_dir / "tokenizer.json", rng, cfg.word_dropout, device)
    head = AttributeHead(cfg.text_dim).to(device)
    losses: dict[str, float] = {}
    if init_from is None:
        text_encoder = build_text_encoder(len(tokenizer), cfg).to(device)
        losses["text_attributes"] = train_text_encoder(text_encoder, head, batcher, cfg, rng, log)
        lap("text_encoder")
        vae = build_vae(cfg).to(device)
    else:
        text_encoder, vae, pca, start = load_trained(Path(init_from), device)
        lap("loaded")

    # Workers are spawned, not forked: the parent may hold CUDA and torch's thread pools.
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        if init_from is None:
            vae_clips = render_set(balanced_attributes(cfg.vae_clips, rng), cfg, rng, pool)
            pca = BlockPCA.fit(vae_clips)
            log(f"latent basis explains {float(pca.arrays['first_explained']):.4f} (frame 0) and "
                f"{float(pca.arrays['rest_explained']):.4f} (later frames) of the pixel variance")
            losses["vae"] = train_vae_decoder(vae, pca, vae_clips, cfg, rng, log)
            del vae_clips
            lap("vae")

        attrs = balanced_attributes(cfg.clips, rng)
        chunks, water_chunks = [], []
        for first in range(0, cfg.clips, 100):  # render and encode in chunks: pixels never all sit in memory
            rendered = render_set(attrs[first:first + 100], cfg, rng, pool, with_water=cfg.subject_weight > 0)
            if cfg.subject_weight > 0:
                water_chunks.append(torch.from_numpy(pca.encode(rendered[:, 1])))
                rendered = rendered[:, 0]
            chunks.append(torch.from_numpy(pca.encode(rendered)))
            if first % 1000 == 0:
                log(f"latents {min(first + 100, cfg.clips)}/{cfg.clips}")
    finally:  # the workers go even when a stage fails
        if pool is not None:
            pool.terminate()
    raw = torch.cat(chunks).to(device)
    if init_from is None:
        mean = raw.mean(dim=(0, 2, 3, 4))
        std = raw.std(dim=(0, 2, 3, 4)).clamp(min=1e-3)
        vae.register_to_config(latents_mean=[round(float(v), 6) for v in mean],
                               latents_std=[round(float(v), 6) for v in std])
    else:  # the experts were trained in this normalisation: keep it
        mean = torch.tensor(vae.config.latents_mean, device=device)
        std = torch.tensor(vae.config.latents_std, device=device)
    latents = (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    weights = None
    if water_chunks:
        water = (torch.cat(water_chunks).to(device) - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
        weights = subject_cell_weights(latents, water, cfg.subject_weight)
        del water
        log(f"subject cell weights: mean {float(weights.mean()):.3f}, cells above 2: "
            f"{float((weights > 2).float().mean()):.2%}")
    lap("latents")

    def save(folder: Path, high: torch.nn.Module, low: torch.nn.Module, text: torch.nn.Module,
             **record: object) -> dict[str, object]:
        """Writes the pipeline, the latent basis and reef_training.json (how the weights were made)."""
        def cpu(model: torch.nn.Module) -> torch.nn.Module:
            return copy.deepcopy(model).to("cpu")

        pipe = WanPipeline(tokenizer=tokenizer, text_encoder=cpu(text), vae=cpu(vae), scheduler=build_scheduler(cfg),
                           transformer=cpu(high), transformer_2=cpu(low), boundary_ratio=BOUNDARY_RATIO)
        pipe.save_pretrained(folder)
        pca.save(folder / "vae" / BASIS_FILE)  # the encoder the latents were made with
        # What `wanrt export` records as the model's request defaults: the clips it learned, generated as its
        # README measures them (8 steps, guidance 4 on both experts, 16 fps).
        write_recipe(folder, Recipe("reef", cfg.frames, (f"{cfg.size}x{cfg.size}",), 8, 4.0, 4.0, 16))
        summary = {"config": dataclasses.asdict(cfg), "seconds": dict(timings),
                   "total_seconds": round(sum(timings.values()), 1), **record, "init_from": history,
                   "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
                   "device_name": torch.cuda.get_device_name() if str(device).startswith("cuda") else "cpu"}
        (folder / "reef_training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary

    def checkpoint(step: int, high: torch.nn.Module, low: torch.nn.Module, text: torch.nn.Module) -> None:
        # A snapshot says how it was made too: a lease that ends mid-run leaves it to train on from.
        save(out_dir / "checkpoints" / f"step_{step}", high, low, text, flow_step=step, losses=losses)
        log(f"checkpoint at flow step {step}")

    high, low, flow_losses = train_experts(text_encoder, head, batcher, latents, attrs, cfg, rng, gen, log,
                                           checkpoint, start, weights)
    lap("experts")
    summary = save(out_dir, high, low, text_encoder, losses={**losses, **flow_losses})
    log(f"wrote {out_dir} in {summary['total_seconds']:.0f}s")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanrt.reef.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="diffusers WanPipeline folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=["cpu", "gpu", "quick"], default="cpu",
                        help="cpu: the defaults, about an hour on 2 cores; gpu: the shipped model's settings "
                             "(use with --device cuda); quick: tiny sizes and a few steps (tests)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (results depend on it)")
    parser.add_argument("--device", default="cpu", help="torch device for the models, e.g. cuda")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering clips (no effect on results)")
    parser.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                        help="a folder this script wrote: train its experts on (fresh clips from --seed), keeping "
                             "its tokenizer, text encoder and VAE; the architecture is the folder's")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainConfig field, e.g. --set joint_steps=200")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = {"cpu": TrainConfig, "gpu": TrainConfig.gpu, "quick": TrainConfig.quick}[args.preset](seed=args.seed)
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        kind = type(getattr(cfg, name))
        overrides[name] = kind(value)
    cfg = dataclasses.replace(cfg, **overrides)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    train(args.out, cfg, log, args.device, args.workers, args.init_from)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
