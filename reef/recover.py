"""The diffusers folder of an exported reef artifact, recovered from its ONNX graphs, so the shipped model can be
exported again (as it was when attention became one operator, issue 31) without retraining.

The training runs that made ``reef/model`` left their diffusers folders on lent machines; the artifact is all the
repository kept. Its graphs hold every weight the pipeline uses: the dynamo exporter keeps a parameter's name
for its initializer, except where it folded a Linear's transposed weight into a MatMul constant, and that MatMul
still carries the Linear's module scope (the metadata quant/placement.py reads). So each torch parameter is found
by name, or as the transposed constant of the MatMul its Linear became; anything else fails loudly. The modules
are built from the architecture the shipped run used (``TrainConfig.gpu()``, networks.py), and each is checked
against every old graph it came from in onnxruntime at export's fp32 tolerance before the folder is written.

Not in any graph, so not recovered: the VAE *encoder* (text-to-video never runs it; it stays as initialised,
seeded, and was never trained for this model either) and the latent basis (``vae/reef_latent_basis.npz``, which
only ``train --init-from`` needs). ::

    python -m wanrt.reef.recover --artifact reef/model --out /tmp/reef-recovered --export /tmp/reef-model

``--export`` then runs `wanrt export`'s own code on the recovered folder with every weight in external data
(``<graph>.onnx.data``), which each graph's onnxruntime form reads too instead of carrying a second copy.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from wanrt.engine.artifact import SCHEDULER_CONFIG_NAME, TOKENIZER_NAME, Manifest, load_artifact
from wanrt.engine.defaults import ModelDefaults, Recipe, write_recipe
from wanrt.engine.schedules import BASE
from wanrt.errors import ArtifactError
from wanrt.export.onnx_io import PARITY_TOLERANCE
from wanrt.export.scopes import SCOPE_METADATA_KEY
from wanrt.measures import max_relative_error
from wanrt.reef.config import TrainConfig

Say = Callable[[str], None]


def graph_weights(path: Path) -> dict[str, np.ndarray]:
    """Parameter name -> value for every weight in the graph at ``path``: initializers under their own names,
    and each MatMul constant under ``<its Linear's module>.weight``, transposed back to torch's (out, in)."""
    model = onnx.load(str(path))
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = dict(values)
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in values:
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = [s for s in ast.literal_eval(meta.get(SCOPE_METADATA_KEY, "[]")) if s][:-1]  # last: the op
        if not scopes:
            continue
        name = max(scopes, key=len) + ".weight"
        if name in weights and not np.array_equal(weights[name], values[node.input[1]].T):
            raise ArtifactError(f"{path.name}: two different MatMul constants claim {name}")
        weights[name] = np.ascontiguousarray(values[node.input[1]].T)
    return weights


def load_weights(module: torch.nn.Module, weights: dict[str, np.ndarray], prefix: str, *,
                 absent: tuple[str, ...] = ()) -> None:
    """Fills ``module``'s state dict from ``weights`` (keys ``prefix`` + parameter name); parameters starting with
    one of ``absent`` are not in the graph and keep their initial values. Fails on anything else missing, on a
    shape that differs, and on a graph weight the module has no place for."""
    state = module.state_dict()
    loaded, missing = {}, []
    for key, tensor in state.items():
        value = weights.get(prefix + key)
        if value is None:
            if not key.startswith(absent):
                missing.append(key)
            continue
        if tuple(value.shape) != tuple(tensor.shape):
            raise ArtifactError(f"{prefix}{key}: the graph holds {value.shape}, the module {tuple(tensor.shape)}")
        loaded[key] = torch.from_numpy(np.array(value, dtype=np.float32))
    # A tied weight (UMT5's shared embedding) is in the graph once, under one of its names.
    loaded_storage = {state[k].data_ptr() for k in loaded}
    missing = [k for k in missing if state[k].data_ptr() not in loaded_storage]
    if missing:
        raise ArtifactError(f"weights not found in the graph: {', '.join(missing[:8])} ({len(missing)} in all)")
    unused = sorted(k for k in weights if k.startswith(prefix) and k.endswith((".weight", ".bias"))
                    and k[len(prefix):] not in state)
    if unused:
        raise ArtifactError(f"graph weights the module has no place for: {', '.join(unused[:8])}")
    module.load_state_dict(loaded, strict=False)


def _compare(what: str, graph: Path, module: torch.nn.Module, feeds: dict[str, np.ndarray], say: Say) -> float:
    import onnxruntime as ort

    old = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(None, feeds)
    with torch.no_grad():
        new = module(*(torch.from_numpy(v) for v in feeds.values()))
    new = [new] if isinstance(new, torch.Tensor) else list(new)
    error = max(max_relative_error(n.numpy(), o) for n, o in zip(new, old, strict=True))
    say(f"{what}: recovered module vs {graph.name}, max relative error {error:.2e}")
    if not error <= PARITY_TOLERANCE:
        raise ArtifactError(f"{what}: the recovered module differs from {graph.name} by {error:.3e}")
    return error


def recover(artifact: Path, out: Path, cfg: TrainConfig | None = None, say: Say = print) -> dict[str, float]:
    """Writes the diffusers WanPipeline folder behind ``artifact`` (exported from a reef run of ``cfg``'s
    architecture, default ``TrainConfig.gpu()``) to ``out``; returns each check's max relative error."""
    from diffusers import WanPipeline
    from transformers import PreTrainedTokenizerFast

    from wanrt.export.text_encoder import TextEncoderGraph
    from wanrt.export.transformer import ExpertGraph
    from wanrt.export.vae_decoder import VaeDecoderInit, VaeDecoderStep
    from wanrt.reef.networks import build_expert, build_scheduler, build_text_encoder, build_vae

    cfg = cfg or TrainConfig.gpu()
    artifact, out = Path(artifact), Path(out)
    manifest = load_artifact(artifact)
    spec = manifest.spec
    torch.manual_seed(cfg.seed)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(artifact / TOKENIZER_NAME), pad_token="<pad>",
                                        eos_token="</s>", unk_token="<unk>", model_max_length=spec.text_length)
    checks: dict[str, float] = {}
    rng = np.random.default_rng(0)

    text = build_text_encoder(len(tokenizer), cfg).eval()
    load_weights(text, graph_weights(artifact / manifest.graphs["text_encoder"]["file"]), "encoder.")
    ids, _ = tokenizer(["a sea turtle glides over a coral reef", "海龟"], padding="max_length",
                       max_length=spec.text_length, return_tensors="np").values()
    mask = (ids != tokenizer.pad_token_id).astype(np.int64)
    mask[:, 0] = 1
    checks["text_encoder"] = _compare("text_encoder", artifact / "text_encoder.onnx", TextEncoderGraph(text),
                                      {"input_ids": ids.astype(np.int64), "attention_mask": mask}, say)

    experts = {}
    for name in spec.experts:
        expert = build_expert(cfg).eval()
        load_weights(expert, graph_weights(artifact / manifest.graphs[name]["file"]), "transformer.")
        for shape in ((2, 16, 5, 12, 12), (1, 16, 2, 6, 4)):
            feeds = {"hidden_states": rng.standard_normal(shape, dtype=np.float32),
                     "timestep": rng.uniform(0, 1000, shape[0]).astype(np.float32),
                     "encoder_hidden_states": rng.standard_normal((shape[0], spec.text_length, spec.text_dim),
                                                                  dtype=np.float32)}
            checks[f"{name}{shape}"] = _compare(name, artifact / f"{name}.onnx", ExpertGraph(expert).eval(), feeds,
                                                say)
        experts[name] = expert

    vae = build_vae(cfg).eval()
    vae.register_to_config(latents_mean=list(spec.latents_mean), latents_std=list(spec.latents_std))
    # The first-frame graph has no temporal upsampling convolutions; the step graph has every decoder weight.
    decoder = graph_weights(artifact / manifest.graphs["vae_decoder_init"]["file"])
    for key, value in graph_weights(artifact / manifest.graphs["vae_decoder_step"]["file"]).items():
        if key in decoder and "." in key and not np.array_equal(decoder[key], value):
            raise ArtifactError(f"{key} differs between the decoder's init and step graphs")
        decoder.setdefault(key, value)
    load_weights(vae, decoder, "", absent=("encoder.", "quant_conv."))
    init = VaeDecoderInit(vae).eval()
    latent = rng.standard_normal((1, 16, 1, 6, 6), dtype=np.float32)
    checks["vae_decoder_init"] = _compare("vae_decoder_init", artifact / "vae_decoder_init.onnx", init,
                                          {"latent": latent}, say)
    with torch.no_grad():
        caches = [c.numpy() for c in init(torch.from_numpy(latent))[1:]]
    step_feeds = {"latent": rng.standard_normal((1, 16, 1, 6, 6), dtype=np.float32),
                  **{n: c for n, c in zip(manifest.vae_decoder["cache"]["names"], caches, strict=True)}}
    checks["vae_decoder_step"] = _compare("vae_decoder_step", artifact / "vae_decoder_step.onnx", VaeDecoderStep(vae),
                                          step_feeds, say)

    scheduler = build_scheduler(cfg)
    scheduler = type(scheduler).from_config(json.loads((artifact / SCHEDULER_CONFIG_NAME).read_text()))
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text, vae=vae, scheduler=scheduler,
                       transformer=experts["transformer"], transformer_2=experts.get("transformer_2"),
                       boundary_ratio=spec.boundary_ratio)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out)
    shutil.copyfile(artifact / TOKENIZER_NAME, out / "tokenizer" / "tokenizer.json")  # the original bytes
    if manifest.defaults is not None:  # so exporting the folder again records the same request defaults
        write_recipe(out, recipe_of(manifest.defaults))
    _same_configs(out, manifest, say)
    (out / "reef_recovered.json").write_text(json.dumps(
        {"artifact_manifest": manifest.source_model, "checks_max_rel_error": checks,
         "not_recovered": ["vae encoder and quant_conv (not in any graph; as initialised)",
                           "vae/reef_latent_basis.npz"]}, indent=2) + "\n", encoding="utf-8")
    return checks


def recipe_of(defaults: ModelDefaults) -> Recipe:
    """The recipe an artifact's defaults were made from (its base schedule's steps and guidance)."""
    base = defaults.schedules.get(BASE, defaults.schedule_values(None))
    return Recipe(defaults.recipe, defaults.frames, defaults.sizes or (f"{defaults.width}x{defaults.height}",),
                  int(base["steps"]), float(base["guidance"]), float(base["guidance_2"]), defaults.fps)


def _same_configs(out: Path, manifest: Manifest, say: Say) -> None:
    """Reports which recovered configs are byte for byte those the artifact was exported from (their sha256 is in
    the manifest; the text encoder's records the transformers version that wrote it, so it may differ only there)."""
    from wanrt.engine.artifact import sha256_file

    for rel, digest in sorted(manifest.source_model.get("config_sha256", {}).items()):
        path = out / rel
        same = path.is_file() and sha256_file(path) == digest
        say(f"config {rel}: {'identical to the original' if same else 'differs from the original (see its diff)'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanrt.reef.recover", description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True, help="an exported reef artifact (e.g. reef/model)")
    parser.add_argument("--out", type=Path, required=True, help="diffusers WanPipeline folder to write")
    parser.add_argument("--export", type=Path, help="then export the recovered folder here (absent or empty)")
    args = parser.parse_args(argv)
    try:
        recover(args.artifact, args.out)
        if args.export:
            from wanrt.export.exporter import export_pipeline

            export_pipeline(args.out, args.export, external_data_threshold=0, progress=print)
    except ArtifactError as err:
        print(f"recover: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
