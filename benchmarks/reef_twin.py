"""A diffusers folder with the reef demo model's architecture and random weights, for the torch backends.

The shipped reef model is an exported artifact; the diffusers folder it was exported from is not shipped. Its
twin has the same widths, depths and tokenizer (checked against the artifact's graphs), so torch eager and
torch.compile run the same arithmetic as onnxruntime does on the artifact; time does not depend on weight values.
"""

from __future__ import annotations

import json
from pathlib import Path

from wanrt.errors import ModelFormatError


def build_reef_twin(artifact: Path, out_dir: Path) -> Path:
    from diffusers import UniPCMultistepScheduler, WanPipeline
    from transformers import PreTrainedTokenizerFast

    from wanrt.benchmarks.shapes import dit_shape
    from wanrt.reef.config import TrainConfig
    from wanrt.reef.networks import build_expert, build_text_encoder, build_vae

    artifact, out_dir = Path(artifact), Path(out_dir)
    cfg = TrainConfig.gpu()  # the shipped model's preset (reef/README.md)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(artifact / "tokenizer.json"), pad_token="<pad>",
                                        eos_token="</s>", unk_token="<unk>")
    scheduler = UniPCMultistepScheduler.from_config(
        json.loads((artifact / "scheduler_config.json").read_text(encoding="utf-8")))
    experts = [build_expert(cfg).eval() for _ in range(2)]
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=build_text_encoder(len(tokenizer), cfg).eval(),
                       vae=build_vae(cfg).eval(), scheduler=scheduler, transformer=experts[0],
                       transformer_2=experts[1], boundary_ratio=0.875)
    pipe.save_pretrained(out_dir)
    for expert in ("transformer", "transformer_2"):
        if dit_shape(out_dir, expert) != dit_shape(artifact, expert):
            raise ModelFormatError(f"the twin's {expert} ({dit_shape(out_dir, expert)}) differs from {artifact}'s "
                                   f"({dit_shape(artifact, expert)})")
    return out_dir
