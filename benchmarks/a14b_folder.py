"""A diffusers Wan folder whose expert is full-width Wan2.2-A14B cut to a few layers, for `wanrt export`.

    python -m wanrt.benchmarks.a14b_folder --out DIR [--layers 1]

The expert has A14B's real widths (dim 5120, 40 heads, ffn 13824, text 4096), so its fp32 graph crosses ONNX's
2 GB protobuf limit with one layer and export takes the external-data path for real. The other parts are as small
as the expert allows (a one-layer UMT5 of width 4096 so the text width matches, a narrow VAE): this folder
measures the expert, not them. Weights are random, saved in fp32 as a diffusers checkpoint stores them.

Shards are cut to the same fraction of the expert as a real checkpoint's: save_pretrained writes a 40-layer
expert (57 GB in fp32) as shards of a few GB (diffusers' ``max_shard_size``; 5 GB assumed here), so loading holds
one shard beside the model at a time. One 3.7 GB shard for two layers would measure a loader situation the real
checkpoint never has; ``--max-shard-size`` overrides it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FULL_LAYERS = 40
FULL_SHARD_BYTES = 5 * 10**9  # the shard size assumed for a full expert (see the module docstring)


def scaled_shard_size(layers: int) -> int:
    """The shard size that cuts a ``layers``-layer expert into as many shards as a full one."""
    return max(FULL_SHARD_BYTES * layers // FULL_LAYERS, 64 * 2**20)


def build_a14b_folder(out_dir: Path, layers: int = 1, max_shard_size: int | None = None) -> Path:
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
    pipe.save_pretrained(out_dir, max_shard_size=max_shard_size or scaled_shard_size(layers))
    return out_dir


# UMT5-XXL's encoder as Wan2.2 ships it (google/umt5-xxl's config).
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True)


def build_a14b_headers(out_dir: Path, dtype: str = "fp32", shard_bytes: int = FULL_SHARD_BYTES) -> Path:
    """Wan2.2-T2V-A14B's full folder layout (two 40-layer experts, UMT5-XXL, the Wan2.1 VAE) as safetensors files
    whose headers are real and whose data are holes (sparse files: no disk, no memory): what `wanrt plan`
    reads. Built from diffusers'/transformers' own classes on the meta device, so every tensor's name and shape
    is the library's. ``dtype``: the stored precision (diffusers' save_pretrained keeps the model's)."""
    import json

    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from wanrt.benchmarks.synthetic import expert_config
    from wanrt.reef.text import EOS_ID, PAD_ID, build_tokenizer

    out_dir = Path(out_dir)
    build_tokenizer(out_dir / "tokenizer")
    stored = {"fp32": ("F32", 4), "bf16": ("BF16", 2)}[dtype]
    with torch.device("meta"):
        models = {"text_encoder": UMT5EncoderModel(UMT5Config(**UMT5_XXL, pad_token_id=PAD_ID, eos_token_id=EOS_ID)),
                  "transformer": WanTransformer3DModel(**expert_config("wan2.2-a14b")),
                  "transformer_2": WanTransformer3DModel(**expert_config("wan2.2-a14b")),
                  "vae": AutoencoderKLWan()}
    for name, model in models.items():
        folder = out_dir / name
        folder.mkdir(parents=True)
        model.config.to_json_file(folder / "config.json") if hasattr(model.config, "to_json_file") else \
            model.save_config(folder)
        # Tied weights (UMT5's encoder.embed_tokens is its shared embedding) are stored once, as save_pretrained does.
        tied = set(getattr(model, "_tied_weights_keys", None) or ())
        tensors = [(k, v.shape) for k, v in model.state_dict().items() if k not in tied]
        _write_sparse_shards(folder, "model" if name == "text_encoder" else "diffusion_pytorch_model", tensors,
                             stored, shard_bytes)
    (out_dir / "scheduler").mkdir()
    (out_dir / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000, "prediction_type": "flow_prediction",
         "use_flow_sigmas": True, "flow_shift": 3.0}))
    (out_dir / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "boundary_ratio": 0.875, "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"], "transformer_2": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"]}))
    return out_dir


def _write_sparse_shards(folder: Path, stem: str, tensors: list, stored: tuple[str, int], shard_bytes: int) -> None:
    import json
    import math
    import os

    shards: list[list] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * stored[1]
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, list(shape), nbytes))
        size += nbytes
    for index, shard in enumerate(shards, 1):
        header, offset = {}, 0
        for name, shape, nbytes in shard:
            header[name] = {"dtype": stored[0], "shape": shape, "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        suffix = f"-{index:05d}-of-{len(shards):05d}" if len(shards) > 1 else ""
        path = folder / f"{stem}{suffix}.safetensors"
        with open(path, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
        os.truncate(path, 8 + len(raw) + offset)  # a hole: the size is real, the data is not there


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanrt.benchmarks.a14b_folder", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--max-shard-size", type=int, default=None,
                        help="bytes per safetensors shard (default: scaled like a 40-layer expert's)")
    parser.add_argument("--headers-only", choices=("fp32", "bf16"), default=None,
                        help="the whole A14B folder (40-layer experts, UMT5-XXL, VAE) as sparse safetensors: real "
                             "headers, no data, for `wanrt plan` (stored in this dtype)")
    args = parser.parse_args(argv)
    if args.headers_only:
        print(build_a14b_headers(args.out, args.headers_only))
        return 0
    print(build_a14b_folder(args.out, args.layers, args.max_shard_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
