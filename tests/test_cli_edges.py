"""The CLI's edges: file errors are one line and exit 2, one device parser for every backend, WANRT_MODEL,
request defaults, and the limits a CPU-only server applies when the operator chose none."""

from __future__ import annotations

import dataclasses
import os

import pytest

from wanrt.cli import EXIT_USAGE, main
from wanrt.engine.device import Device, parse_device
from wanrt.engine.request import GenerationRequest, Limits
from wanrt.errors import InvalidRequestError
from wanrt.reef import default_model_dir
from wanrt.server.app import effective_limits
from wanrt.server.config import CPU_MAXIMA, ServerConfig

TINY = ["--frames", "1", "--height", "16", "--width", "16", "--steps", "1"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("wanrt: error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


def test_a_missing_folder_for_an_output_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["token", "new", "--id", "ci", "--append", str(tmp_path / "missing" / "tokens.jsonl")]) == EXIT_USAGE
    err = one_line_error(capsys)
    assert f"{tmp_path / 'missing' / 'tokens.jsonl'}: No such file or directory" in err


def test_generate_refuses_an_out_folder_that_does_not_exist_before_loading(tmp_path, capsys):
    out = tmp_path / "missing" / "clip.mp4"
    assert main(["generate", "--model", str(tmp_path / "no-model"), "--prompt", "a ray", *TINY,
                 "--out", str(out)]) == EXIT_USAGE
    assert "--out: " in one_line_error(capsys)  # not the missing model: nothing was loaded


def test_an_unwritable_out_is_one_line_and_exit_2(capsys):
    # sysfs takes no new files, even from root (read-only in a container): the clip's write fails.
    assert main(["generate", "--prompt", "a ray", *TINY, "--out", "/sys/wanrt-clip.mp4"]) == EXIT_USAGE
    assert one_line_error(capsys).startswith("wanrt: error: /sys/")


def test_an_out_that_is_a_folder_is_refused_before_loading(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    out.mkdir()
    assert main(["generate", "--model", str(tmp_path / "no-model"), "--prompt", "a ray", *TINY,
                 "--out", str(out)]) == EXIT_USAGE
    assert "--out: " in one_line_error(capsys)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch", "tensorrt"])
def test_a_mistyped_device_is_the_same_error_on_every_backend(backend, tmp_path, capsys):
    argv = ["generate", "--backend", backend, "--model", str(tmp_path), "--device", "gpu0", "--prompt", "a ray",
            *TINY, "--out", str(tmp_path / "clip.mp4")]
    assert main(argv) == EXIT_USAGE
    assert "--device: must be cpu, cuda, cuda:N or auto, got 'gpu0'" in one_line_error(capsys)


def test_parse_device():
    assert parse_device("cpu") == Device("cpu") and str(parse_device("cpu")) == "cpu"
    assert parse_device("cuda") == Device("cuda", 0) and str(parse_device("cuda:3")) == "cuda:3"
    for bad in ("CPU", "cuda:", "cuda:x", "cuda:-1", "gpu", "", " cpu"):
        with pytest.raises(InvalidRequestError) as info:
            parse_device(bad)
        assert info.value.field == "device"


def test_generate_takes_its_model_from_wanrt_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANRT_MODEL", str(tmp_path / "from-env"))
    assert main(["generate", "--prompt", "a ray", *TINY, "--out", str(tmp_path / "clip.mp4")]) == EXIT_USAGE
    assert str(tmp_path / "from-env") in one_line_error(capsys)


def test_request_defaults_are_the_dataclass_defaults_and_never_a_request_to_run():
    defaults = GenerationRequest.defaults()
    assert dataclasses.replace(defaults, prompt="x") == GenerationRequest(prompt="x")
    with pytest.raises(InvalidRequestError, match="prompt"):
        defaults.validate(Limits())


def test_a_cpu_only_server_defaults_to_what_a_cpu_can_finish(tmp_path):
    model = Limits()  # a Wan model's own: 129 frames at 1280x1280
    cpu = ServerConfig(model=tmp_path)
    limits = effective_limits(model, cpu)
    assert {name: getattr(limits, name) for name in CPU_MAXIMA} == CPU_MAXIMA
    assert GenerationRequest.defaults().frames <= limits.max_frames  # the defaults still run
    # The operator's options win over the CPU defaults (never over the model's own limits) ...
    chosen = effective_limits(model, dataclasses.replace(cpu, max_frames=65, max_height=4096))
    assert (chosen.max_frames, chosen.max_height, chosen.max_width) == (65, 1280, CPU_MAXIMA["max_width"])
    # ... and a GPU server keeps the model's limits unless told otherwise.
    assert effective_limits(model, dataclasses.replace(cpu, devices=("cuda:0", "cpu"))) == model


def test_the_packaged_model_is_the_default_when_nothing_names_one(monkeypatch):
    monkeypatch.delenv("WANRT_MODEL", raising=False)
    from wanrt.cli import build_parser

    args = build_parser().parse_args(["generate", "--prompt", "x", "--out", os.devnull + ".mp4"])
    assert args.model is None  # resolved to default_model_dir() at run time
    assert default_model_dir().is_dir()


def test_version_has_one_home(capsys):
    """`wanrt --version` prints the package's version, which the installed metadata reads from the same place."""
    import importlib.metadata

    import wanrt

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"wanrt {wanrt.__version__}" == \
        f"wanrt {importlib.metadata.version('wanrt')}"


def test_a_random_seed_is_drawn_reported_and_written_into_the_clip(tmp_path, capsys):
    from wanrt.engine.video import read_mp4_metadata

    out = tmp_path / "clip.mp4"
    assert main(["generate", "--prompt", "a turtle swims", *TINY, "--seed", "-1", "--out", str(out)]) == 0
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("seed ")]
    settings = read_mp4_metadata(out)
    assert settings["seed"] == int(line.split()[1]) >= 0 and settings["frames"] == 1 and settings["steps"] == 1
