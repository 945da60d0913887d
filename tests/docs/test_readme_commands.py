"""The READMEs' commands work as written: each is covered (readme_commands.COVERAGE), every wanrt command parses
with the real argument parser, every import a command defers to its handler resolves, and the commands that run on
this machine in seconds are run here, from the README's own text, in a folder where the names the README uses
(``wan22-onnx``, ``Wan2.2-T2V-A14B-Diffusers``, ...) are small stand-in models."""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from readme_commands import (  # noqa: E402
    COVERAGE,
    REPO,
    Snippet,
    coverage_of,
    is_wanrt,
    simple_commands,
    snippets,
    wanrt_argv,
)

from wanrt.cli import build_parser  # noqa: E402

SNIPPETS = list(snippets())
WANRT_COMMANDS = [(s, argv) for s in SNIPPETS if s.language == "bash"
                  for argv in simple_commands(s.text) if is_wanrt(argv)]


def _id(snippet: Snippet) -> str:
    return f"{snippet.where} {snippet.text[:60]}"


def test_every_readme_command_is_covered_and_every_entry_still_matches():
    uncovered = [s.where + ": " + s.text[:100] for s in SNIPPETS if coverage_of(s) is None]
    assert not uncovered, "README commands no test covers (add them to tests/docs/readme_commands.py):\n" + \
        "\n".join(uncovered)
    stale = [entry.pattern for entry in COVERAGE if not any(entry.matches(s) for s in SNIPPETS)]
    assert not stale, f"coverage entries matching no README command any more: {stale}"


def test_every_named_test_exists():
    """A coverage entry names a test file and, unless the whole file is meant, a test function in it."""
    missing = []
    for entry in COVERAGE:
        file, _, name = entry.test.partition("::")
        path = REPO / file
        if not path.is_file():
            missing.append(entry.test)
        elif name and not re.search(rf"^def {re.escape(name)}\(", path.read_text(encoding="utf-8"), re.M):
            missing.append(entry.test)
    assert not missing, f"named tests that do not exist: {missing}"


@pytest.mark.parametrize(("snippet", "argv"), WANRT_COMMANDS, ids=[_id(s) for s, _ in WANRT_COMMANDS])
def test_wanrt_command_parses(snippet, argv):
    """A renamed subcommand or option fails here, not in a reader's terminal."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = build_parser().parse_args(wanrt_argv(argv))
        except SystemExit as exit_:
            # "wanrt serve ... --step-cache 0.5" elides what the section is not about, required options included.
            elided = any(token in ("...", "…") for token in argv) and \
                "the following arguments are required" in err.getvalue()
            if elided:
                return
            pytest.fail(f"{snippet.where}: `{' '.join(argv)}` does not parse (exit {exit_.code}): {err.getvalue()}")
    assert callable(args.handler)


def _deferred_imports() -> list[tuple[str, str, int, str, str | None]]:
    """(file, module, line, imported module, imported name) for each import inside a function of a shipped wanrt
    module: the imports a command's handler makes only when it runs."""
    found = []
    for path in sorted(REPO.glob("*/*.py")) + sorted(REPO.glob("*/*/*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in ("tests", "scripts", "deploy") or rel.parts[0].startswith("."):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wanrt") \
                        and not node.level:
                    found += [(str(rel), node.module, node.lineno, node.module, a.name) for a in node.names]
                elif isinstance(node, ast.Import):
                    found += [(str(rel), a.name, node.lineno, a.name, None) for a in node.names
                              if a.name.startswith("wanrt")]
    return sorted(set(found))


# Optional packages this test's environment does not have: an import that fails for want of one of them is the
# machine's, not the code's (the GPU image has them; tests/trt/ checks that code against the real bindings).
_ABSENT_HERE = ("tensorrt", "pycuda", "cuda")


def test_every_deferred_import_resolves():
    """What a command imports only once it runs exists: a function moved to another module (`wanrt bench
    --reef-twin` once imported `build_expert` from where it no longer was) fails CI, not a user."""
    broken = []
    for file, _, line, module, name in _deferred_imports():
        try:
            imported = importlib.import_module(module)
        except ImportError as err:
            if (err.name or "").split(".")[0] not in _ABSENT_HERE:
                broken.append(f"{file}:{line}: import {module}: {err}")
            continue
        if name is not None and not hasattr(imported, name):
            with contextlib.suppress(ImportError):
                importlib.import_module(f"{module}.{name}")
                continue
            broken.append(f"{file}:{line}: {module} has no {name}")
    assert not broken, "\n".join(broken)


# --- The README's own text, run at a small size -------------------------------------------------------------------

def _snippet(pattern: str) -> list[Snippet]:
    found = [s for s in SNIPPETS if re.search(pattern, s.text)]
    assert found, f"no README command matches {pattern!r}"
    return found


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory where the README's names resolve: ``.venv`` is this test's environment and
    ``reef/model`` the shipped model."""
    root = tmp_path_factory.mktemp("readme")
    (root / ".venv").symlink_to(Path(sys.prefix))
    (root / "reef").mkdir()
    (root / "reef" / "model").symlink_to(REPO / "reef" / "model")
    return root


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               TQDM_DISABLE="1")
    env.update(extra)
    return env


def _run(command: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=_env(**env), text=True,
                            capture_output=True, timeout=timeout)
    assert result.returncode == 0, f"`{command}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def _stand_in(sandbox: Path, name: str, model: Path) -> None:
    """``name`` in the sandbox is ``model`` (copied, so that commands writing into it change only the copy)."""
    target = sandbox / name
    if not target.exists():
        shutil.copytree(model, target, symlinks=True)


def test_first_command_makes_a_clip_on_the_reef_model(sandbox):
    """The README's first command, past the install (scripts/test.sh makes the same venv; the packaging test
    builds the wheel): the prompt as written, on the shipped model, at its defaults."""
    [snippet] = _snippet(r"^python3 -m venv \.venv && \.venv/bin/pip install -e \. && \.venv/bin/wanrt generate")
    generate = snippet.text.split(" && ")[-1]
    _run(generate, sandbox)
    out = Path(sandbox / re.search(r"--out (\S+)", generate).group(1))
    assert out.stat().st_size > 1000 and out.read_bytes()[4:8] == b"ftyp"


@pytest.mark.slow  # the tiny two-expert export (about 2 min on 2 cores, shared with other slow tests) and six clips
def test_generate_commands_run_on_stand_in_models(sandbox, tiny_model_dir, tiny_artifact_dir):
    """Each README generate line, as written but at the shipped model's size (17 frames at 96x96, 2 steps): the
    A14B names stand for the tiny two-expert model (its diffusers folder and its export)."""
    for name in ("wan22-onnx", "wan22-int8", "wan22-lightning"):
        _stand_in(sandbox, name, tiny_artifact_dir)
    _stand_in(sandbox, "Wan2.2-T2V-A14B-Diffusers", tiny_model_dir)
    commands = [s.text for s in SNIPPETS if coverage_of(s) is not None
                and coverage_of(s).test.endswith("::test_generate_commands_run_on_stand_in_models")]
    assert len(commands) >= 4
    for command in commands:
        small = re.sub(r"--steps \d+", "", command) + " --steps 2"
        _run(small, sandbox)
        out = sandbox / re.search(r"--out (\S+)", command).group(1)
        assert out.is_file() and out.stat().st_size > 0, command
        out.unlink()


@pytest.mark.slow  # four backends measured, the twin trained on nothing but built (about 1 min on 2 cores)
def test_bench_on_the_reef_model_and_its_twin(sandbox):
    """`wanrt bench --model reef/model ... --reef-twin`: the README's models that need `wanrt quantize` first are
    left out, the rest as written, at one frame of 16x16 and one timed run."""
    for snippet in _snippet(r"^wanrt bench --model reef/model"):
        command = re.sub(r"--model reef-(int8|fp8) ", "", snippet.text).replace(" --serve", "")
        result = _run(f"{command} --backends onnxruntime,torch --components dit --frames 1 --height 16 --width 16 "
                      f"--runs 1 --warmup 0 --peak-tflops 1 --name readme", sandbox)
        assert "| transformer_cfg_pair |" in result.stdout and "torch fp32 (reef-twin)" in result.stdout
        assert (sandbox / "readme.json").is_file()


def test_signing_commands(sandbox, tmp_path):
    """keygen, sign and verify-signature as the README writes them, on copies of the shipped model standing in
    for the README's folders."""
    for name in ("wan22-int8", "wan22-engines", "qualification-2026-11"):
        shutil.rmtree(sandbox / name, ignore_errors=True)
        _stand_in(sandbox, name, REPO / "reef" / "model")
    lines = [s.text for s in _snippet(r"^wanrt (keygen|sign|verify-signature) ")]
    signed = set()
    for line in lines:
        if line.startswith("wanrt verify-signature "):
            folder = line.split()[2]
            if folder not in signed:  # the README signs it with a command of another section (qualify)
                _run(f"wanrt sign {folder} --key wanrt-signing.key", sandbox)
        _run(line, sandbox)
        if line.startswith("wanrt sign "):
            signed.add(line.split()[2])
    (sandbox / "wan22-engines" / "manifest.json").write_text("{}")
    tampered = subprocess.run(["bash", "-c", next(x for x in lines if x.startswith("wanrt verify-signature "
                                                                                       "wan22-engines"))],
                              cwd=sandbox, env=_env(), capture_output=True, text=True)
    assert tampered.returncode == 2 and "manifest.json" in tampered.stderr


# Each README script command, cut to a small size: a leading `flock LOCK` is the shared machine's, not the command's.
_SCRIPT_SIZES = {
    "measure_memory.py": (r" --grid .*$", " --grid 1:16x16"),
    # Its cheapest case (the reef's step): the A14B-width step a command names is minutes of CPU, and every case
    # runs through the same code.
    "attention_benchmark.py": (r"--only .*$", "--only reef-step --work attention"),
    # The reef's gate: the tiny A14B-shaped one exports two models first (minutes); both run one gate's code.
    "gate_tables.py": (r"(--only \w+ )?--prompts \d+", "--only reef --prompts 1 --out gate"),
    "verified_load_memory.py": (r"--gib \S+", "--gib 0.02"),
}
_SCRIPT_COMMANDS = [s for s in SNIPPETS if s.language == "bash" and re.search(r"scripts/\w+\.py", s.text)]


@pytest.mark.parametrize("snippet", [
    pytest.param(s, marks=[] if "measure_memory" in s.text else [pytest.mark.slow]) for s in _SCRIPT_COMMANDS],
    ids=[_id(s) for s in _SCRIPT_COMMANDS])
def test_scripts_run(snippet, sandbox):
    (sandbox / "scripts").is_symlink() or (sandbox / "scripts").symlink_to(REPO / "scripts")
    command = re.sub(r"^flock \S+ ", "", snippet.text)
    script = re.search(r"scripts/(\w+\.py)", command).group(1)
    pattern, small = _SCRIPT_SIZES[script]
    command = re.sub(pattern, small, command) if re.search(pattern, command) else command + small
    _run(command, sandbox, timeout=600)


def test_gpu_box_tree_links_every_package():
    """benchmarks/README's GPU box runs wanrt from a tree of links, one per package folder: a folder left out of the
    loop (a package added since) is an ImportError there, in the middle of a lent GPU's minutes."""
    import tomllib

    [snippet] = _snippet(r"^for d in .*; do ln -s ")
    linked = set(re.match(r"for d in (.*?);", snippet.text).group(1).split())
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {folder.split("/")[0] for package, folder in config["package-dir"].items() if package != "wanrt"}
    assert folders - linked == set(), f"{snippet.where}: the loop does not link {sorted(folders - linked)}"


def test_python_example_writes_a_clip(sandbox):
    """README's Python example, as written, in a fresh interpreter: the reef model at its defaults."""
    [snippet] = _snippet(r"^from wanrt\.engine\.loader import load_pipeline")
    _run(f"python - <<'EOF'\n{snippet.text}EOF", sandbox)
    out = sandbox / "turtle.mp4"
    assert out.stat().st_size > 1000 and out.read_bytes()[4:8] == b"ftyp"
