"""Builds tiny, randomly initialised diffusers-format Wan2.2 pipelines for tests.

Everything is saved with ``save_pretrained`` and loaded back through the real loading code, exactly as a
user's Wan2.2-T2V-A14B-Diffusers folder would be: two experts (``transformer`` for high noise,
``transformer_2`` for low noise) switched at ``boundary_ratio``, a UMT5 text encoder, AutoencoderKLWan and a
flow-matching UniPC scheduler. The tokenizer is a WordLevel model trained here on the test vocabulary.
"""

from __future__ import annotations

from pathlib import Path

TEXT_DIM = 32
VOCAB_WORDS = (
    "a an the of in on with and from to past through over under near slowly quickly drifts rises sinks "
    "glowing school jellyfish fish bubbles turtle ray vent hydrothermal blue green red deep dark water "
    "reef sand coral light sunbeams murky turquoise left right up down still swims floats"
).split()


def build_tokenizer(out_dir: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"])
    tok.train_from_iterator([" ".join(VOCAB_WORDS)] * 2, trainer=trainer)
    # UMT5 appends </s> to every sequence; pad id 0, eos id 1, as in the real tokenizer.
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(out_dir)


def build_text_encoder(vocab_size: int, text_dim: int = TEXT_DIM):  # noqa: ANN201
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=text_dim,
        d_kv=text_dim // 4,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        pad_token_id=0,
        eos_token_id=1,
    )
    return UMT5EncoderModel(config).eval()


# The fixed fixture's expert; tests/drawn_models.py draws other values for the same keys.
TRANSFORMER = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 12, "ffn_dim": 32,
               "num_layers": 2, "text_dim": TEXT_DIM}


def build_transformer(seed: int, **architecture: object):  # noqa: ANN201
    """A random WanTransformer3DModel: TRANSFORMER's architecture, with ``architecture`` overriding it."""
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        **{**TRANSFORMER, **architecture},
        in_channels=16,
        out_channels=16,
        freq_dim=32,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


def build_vae(seed: int = 0):  # noqa: ANN201
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    # Random latents statistics so denormalisation is exercised, not the identity.
    return vae


def build_scheduler(flow_shift: float = 3.0):  # noqa: ANN201
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=flow_shift
    )


def build_pipeline(out_dir: Path, *, two_experts: bool = True, boundary_ratio: float = 0.875,
                   seeds: tuple[int, int] = (1, 2), **architecture: object) -> Path:
    """Writes a diffusers WanPipeline folder to ``out_dir`` and returns it.

    ``seeds``: the two experts' weight seeds; ``architecture``: WanTransformer3DModel settings over TRANSFORMER
    (its ``text_dim`` is also the text encoder's width).
    """
    from diffusers import WanPipeline
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    build_tokenizer(out_dir / "_tok")
    tokenizer = AutoTokenizer.from_pretrained(out_dir / "_tok")
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=build_text_encoder(len(tokenizer), int(architecture.get("text_dim", TEXT_DIM))),
        vae=build_vae(),
        scheduler=build_scheduler(),
        transformer=build_transformer(seeds[0], **architecture),
        transformer_2=build_transformer(seeds[1], **architecture) if two_experts else None,
        boundary_ratio=boundary_ratio if two_experts else None,
    )
    pipe.save_pretrained(out_dir)
    import shutil

    shutil.rmtree(out_dir / "_tok")
    return out_dir
