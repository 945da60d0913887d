"""A diffusers Wan folder whose expert is full-width Wan2.2-A14B cut to a few layers, for `wanrt export`.

    python -m wanrt.benchmarks.a14b_folder --out DIR [--layers 1]

The expert has A14B's real widths (dim 5120, 40 heads, ffn 13824, text 4096), so its fp32 graph crosses ONNX's
2 GB protobuf limit with one layer and export takes the external-data path for real. The other parts are as small
as the expert allows (a one-layer UMT5 of width 4096 so the text width matches, a narrow VAE): this folder
measures the expert, not them. Weights are random.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_a14b_folder(out_dir: Path, layers: int = 1) -> Path:
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    from wanrt.benchmarks.synthetic import VAE_CONFIGS, build_expert, expert_config
    from wanrt.reef.text import EOS_ID, PAD_ID, build_tokenizer

    out_dir = Path(out_dir)
    build_tokenizer(out_dir / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(out_dir / "tokenizer")
    config = expert_config("wan2.2-a14b", layers)
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=config["text_dim"], d_kv=64, d_ff=256, num_layers=1, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, pad_token_id=PAD_ID,
        eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID)).eval()
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=AutoencoderKLWan(**VAE_CONFIGS["tiny"]),
                       scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                         num_train_timesteps=1000, flow_shift=3.0),
                       transformer=build_expert(config, "cpu", torch.float32), transformer_2=None)
    pipe.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanrt.benchmarks.a14b_folder", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=1)
    args = parser.parse_args(argv)
    print(build_a14b_folder(args.out, args.layers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
