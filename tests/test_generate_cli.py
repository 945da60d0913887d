"""`wanrt generate` end to end: real artifact, real onnxruntime, real MP4 decoded back by PyAV; bad input."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from wanrt.cli import main
from wanrt.engine.video import read_mp4_frames

SMALL = ["--frames", "5", "--height", "32", "--width", "48", "--steps", "3"]


def test_generate_mp4_decodes_back(tiny_artifact_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    npy = tmp_path / "clip.npy"
    common = ["generate", "--model", str(tiny_artifact_dir), "--prompt", "a glowing jellyfish", *SMALL, "--seed", "3"]
    assert main([*common, "--out", str(out)]) == 0
    assert main([*common, "--out", str(npy)]) == 0
    frames = np.load(npy)
    assert frames.dtype == np.uint8 and frames.shape == (5, 32, 48, 3)
    decoded = read_mp4_frames(out)
    assert decoded.shape == frames.shape
    # H.264 at crf 18 in yuv420p: close to the raw frames, not equal.
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 6
    assert not list(tmp_path.glob(".*partial"))


def test_seed_reproduces_and_latents_override(tiny_artifact_dir, tmp_path):
    def run(name: str, *extra: str) -> np.ndarray:
        out = tmp_path / f"{name}.npy"
        assert main(["generate", "--model", str(tiny_artifact_dir), "--prompt", "bubbles rise", *SMALL, *extra,
                     "--out", str(out)]) == 0
        return np.load(out)

    noise = np.random.default_rng(11).standard_normal((1, 16, 2, 4, 6), dtype=np.float32)
    np.save(tmp_path / "noise.npy", noise)
    a, b, c = run("a", "--seed", "1"), run("b", "--seed", "1"), run("c", "--seed", "2")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(run("d", "--latents", str(tmp_path / "noise.npy")),
                          run("e", "--latents", str(tmp_path / "noise.npy"), "--seed", "99"))


def test_unset_seed_is_drawn_printed_and_replays(tiny_artifact_dir, tmp_path, capsys):
    """No --seed: each run draws its own and prints it on stderr; giving the printed seed makes the same clip."""
    def run(name: str, *extra: str) -> tuple[np.ndarray, int]:
        out = tmp_path / f"{name}.npy"
        assert main(["generate", "--model", str(tiny_artifact_dir), "--prompt", "bubbles rise", *SMALL, *extra,
                     "--out", str(out)]) == 0
        seeds = re.findall(r"^seed (\d+)$", capsys.readouterr().err, re.M)
        assert len(seeds) == 1
        return np.load(out), int(seeds[0])

    (a, seed_a), (b, seed_b) = run("a"), run("b")
    assert seed_a != seed_b and not np.array_equal(a, b)  # two draws from 2**32 meet once in 4e9 runs
    again, seed = run("again", "--seed", str(seed_a))
    assert seed == seed_a and np.array_equal(again, a)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_help_shows_the_model_s_own_defaults(backend, tiny_artifact_dir, tiny_model_dir, capsys):
    """`generate --model M -h` prints M's defaults (the manifest's, or the diffusers folder's recipe) without
    loading it; a model it cannot read is named, and the help still prints."""
    from wanrt.engine.loader import model_defaults

    model = tiny_artifact_dir if backend == "onnxruntime" else tiny_model_dir
    defaults = model_defaults(model, backend)
    with pytest.raises(SystemExit) as done:
        main(["generate", "--model", str(model), "--backend", backend, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--prompt" in text
    assert (f"Defaults of {model} ({backend}): {defaults.frames} frames at {defaults.width}x{defaults.height}, "
            f"{defaults.fps} fps; schedule {defaults.schedule} ({defaults.scheduler}): {defaults.steps} steps, "
            f"guidance {defaults.guidance:g} / {defaults.guidance_2:g}") in text
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(model / "missing"), "--backend", backend, "-h"])
    assert "The model's defaults are not shown:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "6"], "--frames: must be 4k+1"),
        (["--height", "40"], "--height: must be a multiple of 16"),
        (["--width", "24"], "--width: must be a multiple of 16"),
        (["--steps", "0"], "--steps: must be between 1"),
        (["--guidance", "nan"], "--guidance: must be finite"),
        (["--guidance-2", "inf"], "--guidance-2: must be finite"),
        (["--prompt", "   "], "--prompt: must not be empty"),
        (["--latents", "/nonexistent.npy"], "--latents: cannot read"),
    ],
)
def test_bad_input_fails_at_once_and_writes_nothing(tiny_artifact_dir, tmp_path, capsys, args, message):
    out = tmp_path / "clip.mp4"
    argv = ["generate", "--model", str(tiny_artifact_dir), "--prompt", "a ray", *SMALL, "--out", str(out), *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_wrong_latent_shape_is_refused(tiny_artifact_dir, tmp_path, capsys):
    np.save(tmp_path / "noise.npy", np.zeros((1, 16, 3, 4, 6), np.float32))
    argv = ["generate", "--model", str(tiny_artifact_dir), "--prompt", "a ray", *SMALL,
            "--latents", str(tmp_path / "noise.npy"), "--out", str(tmp_path / "clip.npy")]
    assert main(argv) == 2
    assert "--latents: shape (1, 16, 3, 4, 6) does not match" in capsys.readouterr().err
    assert not (tmp_path / "clip.npy").exists()


def test_not_a_model_folder(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "a.mp4")]) == 2
    assert "manifest" in capsys.readouterr().err
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    assert main(["generate", "--backend", "torch", "--model", str(tmp_path), "--prompt", "x",
                 "--out", str(tmp_path / "a.mp4")]) == 2
    assert "only WanPipeline" in capsys.readouterr().err


def test_onnxruntime_path_imports_no_torch(tiny_artifact_dir, tmp_path):
    """The serving path runs with torch, diffusers and transformers made unimportable."""
    out = tmp_path / "clip.mp4"
    script = textwrap.dedent(f"""
        import sys
        BLOCKED = ("torch", "diffusers", "transformers", "onnxscript")
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked import of {{name}}")
        sys.meta_path.insert(0, Block())
        from wanrt.cli import main
        code = main(["generate", "--model", {str(tiny_artifact_dir)!r}, "--prompt", "a turtle rises",
                     *{SMALL!r}, "--out", {str(out)!r}])
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED], "a blocked module was imported"
        sys.exit(code)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_mp4_frames(Path(out)).shape == (5, 32, 48, 3)


def test_words_outside_the_vocabulary_and_untrained_sizes_are_named_on_stderr(tmp_path, capsys):
    """The reef model knows 176 words: the README's own prompt has two it lacks, a Chinese one has more; a prompt
    of known words at the model's size gets no warning, another size one."""
    def warnings(prompt: str, *size: str) -> list[str]:
        assert main(["generate", "--prompt", prompt, "--frames", "1", "--steps", "1", "--seed", "0", *size,
                     "--out", str(tmp_path / "clip.npy")]) == 0
        return [line for line in capsys.readouterr().err.splitlines() if "warning" in line]

    [warning] = warnings("a school of glowing jellyfish drifts past a hydrothermal vent, 珊瑚礁 bubbles rising")
    assert "lacks 'drifts', 'past', '珊瑚礁'" in warning
    assert warnings("a school of glowing jellyfish") == []
    [warning] = warnings("a school of glowing jellyfish", "--height", "32", "--width", "48")
    assert "48x32 is not a size this model was made for (96x96)" in warning


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_hub_id_as_model_gets_the_download_command(backend, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--backend", backend, "--model", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "--prompt", "x",
                 "--out", str(tmp_path / "clip.mp4")]) == 2
    err = capsys.readouterr().err
    assert "hf download Wan-AI/Wan2.2-T2V-A14B-Diffusers --local-dir Wan2.2-T2V-A14B-Diffusers" in err
    assert not list(tmp_path.iterdir())
    assert main(["generate", "--model", "no-such-folder", "--prompt", "x", "--out", str(tmp_path / "c.mp4")]) == 2
    assert "no-such-folder is not a directory (it does not exist)\n" in capsys.readouterr().err
