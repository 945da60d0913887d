"""What is verified is what is loaded: files swapped at every point between the signature check and the load.

An attacker who can write the model folder (not the key) replaces files while `wanrt generate --trust` loads
it: the whole set at once (graphs, weights, tokenizer and a manifest rewritten to match them), by rename, by
writing into the files in place, or by symbolic links to files holding the very same bytes. The swap fires
once, at one point of the load: after any read or hash of a file, before any onnxruntime session or the
tokenizer is made, or after everything is loaded. Every run must end with exit 2 or with the signed model's
own frames, never the swapped model's. A control run shows the swapped set is a working model that generates
other frames, so a loader that let it through would fail here.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from wanrt.cli import main
from wanrt.engine.artifact import sha256_file

ARGS = ["--prompt", "a glowing school of fish drifts past the vent", "--frames", "5", "--height", "32",
        "--width", "48", "--steps", "2", "--seed", "3"]
# The files an attacker replaces: every kind the onnxruntime backend reads, and the manifest that vouches.
SWAPPED = ("transformer.ort.onnx", "transformer.onnx.data", "tokenizer.json", "manifest.json")
KINDS = ("rename", "in place", "symlink")


def _evil_folder(signed: Path, out: Path) -> Path:
    """A working model of the same shape that generates other frames: the high-noise expert gets the low-noise
    expert's weights, the tokenizer maps words to other ids, and the manifest is rewritten to match."""
    shutil.copytree(signed, out)
    (out / "transformer.onnx.data").write_bytes((signed / "transformer_2.onnx.data").read_bytes())
    tokenizer = json.loads((signed / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    words = sorted(w for w, i in vocab.items() if i > 2)  # special tokens keep their ids
    ids = [vocab[w] for w in words]
    vocab.update(zip(words, ids[1:] + ids[:1], strict=True))
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("transformer.onnx.data", "tokenizer.json"):
        manifest["files"][name] = sha256_file(out / name)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def _swap(folder: Path, evil: Path, kind: str) -> None:
    for name in SWAPPED:
        target = folder / name
        if kind == "rename":  # what an inotify watcher does: a complete file renamed over the checked one
            partial = folder / f".{name}.swap"
            shutil.copyfile(evil / name, partial)
            os.replace(partial, target)
        elif kind == "in place":  # same inode, other bytes (a file grown or shrunk is caught the same way)
            with open(target, "r+b") as f:
                f.truncate(0)
                f.write((evil / name).read_bytes())
        else:  # a link to a file outside the folder holding exactly the signed bytes: still refused
            outside = evil.parent / f"outside-{name}"
            shutil.copyfile(target, outside)
            target.unlink()
            target.symlink_to(outside)


class _Points:
    """Counts the points of a load (every file read or hashed, every session and tokenizer made) and fires one
    action at the n-th."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import onnxruntime
        import tokenizers

        from wanrt.engine import model_files

        self.count, self.fire_at, self.action = 0, -1, None
        self.names: list[str] = []
        self._after(monkeypatch, model_files.ModelFolder, "read", lambda args: f"read {args[1]}")
        self._after(monkeypatch, model_files.ModelFolder, "digest", lambda args: f"hashed {args[1]}")
        self._before(monkeypatch, onnxruntime, "InferenceSession", lambda args: "session")
        self._before(monkeypatch, tokenizers.Tokenizer, "from_buffer", lambda args: "tokenizer", static=True)

    def _point(self, name: str) -> None:
        self.names.append(name)
        if self.count == self.fire_at and self.action is not None:
            self.action()
        self.count += 1

    def _after(self, monkeypatch: pytest.MonkeyPatch, owner: object, attr: str, name: Callable) -> None:
        original = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            self._point(name(args))
            return result

        monkeypatch.setattr(owner, attr, wrapped)

    def _before(self, monkeypatch: pytest.MonkeyPatch, owner: object, attr: str, name: Callable, *,
                static: bool = False) -> None:
        original = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            self._point(name(args))
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, attr, staticmethod(wrapped) if static else wrapped)


def _generate(folder: Path, out: Path, public: Path | None) -> int:
    trust = ["--trust", str(public)] if public is not None else []
    return main(["generate", "--model", str(folder), *trust, *ARGS, "--out", str(out)])


@pytest.fixture
def evil(signed_artifact: Path, tmp_path: Path) -> Path:
    return _evil_folder(signed_artifact, tmp_path / "evil")


def test_every_swap_between_check_and_load_is_refused_or_changes_nothing(signed_artifact, evil, key_pair, tmp_path,
                                                                         monkeypatch, capsys):
    public = key_pair[1]
    reference = tmp_path / "signed.npy"
    points = _Points(monkeypatch)
    assert _generate(signed_artifact, reference, public) == 0
    signed_frames = np.load(reference)
    names, total = list(points.names), points.count
    assert total > 20 and any(n.startswith("session") for n in names), names

    # Control: the swapped set is a model wanrt loads (without --trust) and it generates other frames.
    control = tmp_path / "control"
    shutil.copytree(signed_artifact, control)
    _swap(control, evil, "rename")
    assert _generate(control, tmp_path / "control.npy", None) == 0
    assert not np.array_equal(np.load(tmp_path / "control.npy"), signed_frames)

    seed = random.randrange(1 << 16)
    print(f"swap kinds rotated from seed {seed}; {total} points: {names}")
    refused = kept = 0
    for point in range(total + 1):  # the last: after everything loaded, before the clip is generated
        kind = KINDS[(point + seed) % len(KINDS)]
        folder = tmp_path / f"run{point}"
        shutil.copytree(signed_artifact, folder)
        points.count, points.fire_at = 0, point
        points.action = lambda folder=folder, kind=kind: _swap(folder, evil, kind)
        out = tmp_path / f"run{point}.npy"
        if point == total:
            monkeypatch.setattr("wanrt.engine.pipeline.VideoPipeline.generate", _swapping_first(
                folder, evil, kind))
        code = _generate(folder, out, public)
        err = capsys.readouterr().err
        where = f"swap ({kind}) at point {point} ({names[point] if point < total else 'after loading'})"
        assert code in (0, 2), f"{where}: exit {code}: {err}"
        if code == 0:
            assert np.array_equal(np.load(out), signed_frames), f"{where}: the swapped model's frames came out"
            kept += 1
        else:
            assert not out.exists() and str(folder) in err, f"{where}: {err}"
            refused += 1
    assert refused and kept  # both outcomes happen: a swap before a file is read is refused, after it is moot


def _swapping_first(folder: Path, evil: Path, kind: str) -> Callable:
    from wanrt.engine.pipeline import VideoPipeline

    original = VideoPipeline.generate

    def generate(self, *args, **kwargs):
        _swap(folder, evil, kind)
        return original(self, *args, **kwargs)

    return generate


def test_links_inside_a_trusted_folder_are_refused(signed_artifact, key_pair, tmp_path, capsys):
    # The same bytes, reached through a link: refused under --trust (the link could point anywhere later)...
    data = signed_artifact / "transformer.onnx.data"
    outside = tmp_path / "weights.data"
    shutil.move(data, outside)
    data.symlink_to(outside)
    assert _generate(signed_artifact, tmp_path / "a.npy", key_pair[1]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert _generate(signed_artifact, tmp_path / "a.npy", None) == 0  # ...followed without --trust, hashes checked


def test_serve_refuses_a_model_swapped_after_its_signature_was_checked(signed_artifact, evil, key_pair, tmp_path,
                                                                       monkeypatch, capsys):
    import wanrt.server.app

    def started(*_args, **_kwargs):
        raise AssertionError("serve started on a swapped model")

    monkeypatch.setattr(wanrt.server.app, "WanrtServer", started)
    points = _Points(monkeypatch)
    points.fire_at = 1  # after the signature is read: the manifest bytes are checked, everything else swapped
    points.action = lambda: _swap(signed_artifact, evil, "rename")
    code = main(["serve", "--model", str(signed_artifact), "--trust", str(key_pair[1]), "--insecure",
                 "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--audit-log",
                 str(tmp_path / "audit.jsonl")])
    assert code == 2
    assert str(signed_artifact) in capsys.readouterr().err
