"""Peak memory of merging a LoRA into a full-width A14B expert (cut to N layers): does the merge hold a second copy?

    flock /work/wt/heavy.lock .venv/bin/python scripts/lora_merge_memory.py --layers 2 --rank 64

Builds the expert (dim 5120, ffn 13824, random fp32 weights) in this process, writes a LoRA of the given rank on
every attention and feed-forward projection of every block (the layout LightX2V's distill LoRAs use), resets the
kernel's high-water mark, merges with export/lora.py and reports VmHWM against the expert's own size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
           "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rank", type=int, default=64)
    args = parser.parse_args(argv)
    import torch
    from safetensors.torch import save_file

    from wanrt.benchmarks.synthetic import build_expert, expert_config
    from wanrt.benchmarks.timing import peak_rss_mb, reset_peak_rss
    from wanrt.export.lora import LoraFile, merge_loras

    expert = build_expert(expert_config("wan2.2-a14b", args.layers), "cpu", torch.float32).eval()
    weights_mb = sum(p.numel() * p.element_size() for p in expert.parameters()) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lora.safetensors"
        generator = torch.Generator().manual_seed(0)
        tensors = {}
        for i, block in enumerate(expert.blocks):
            for target in TARGETS:
                out_f, in_f = block.get_submodule(target).weight.shape
                key = f"transformer.blocks.{i}.{target}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(args.rank, in_f, generator=generator) * 1e-3
                tensors[f"{key}.lora_B.weight"] = torch.randn(out_f, args.rank, generator=generator) * 1e-3
        lora_mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
        save_file(tensors, str(path))
        del tensors
        with open("/proc/self/status") as f:
            before = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
        reset = reset_peak_rss()
        merge_loras(expert, [LoraFile(path, 1.0, "transformer")])
        peak = peak_rss_mb()
    print(json.dumps({"layers": args.layers, "rank": args.rank, "expert_weights_mb": round(weights_mb),
                      "lora_mb": round(lora_mb), "rss_before_merge_mb": round(before),
                      "peak_during_merge_mb": round(peak) if peak else None, "peak_reset": reset,
                      "merge_overhead_mb": round(peak - before) if peak else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
