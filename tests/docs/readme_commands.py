"""The commands the READMEs show, as a reader would copy them, and what runs each of them in the suite.

Every fenced ``bash``/``sh``/``shell`` line (continuations joined, comments dropped) and every ``python`` block of
README.md, the folder READMEs and docs/ is extracted. ``COVERAGE`` says, for each, which test runs it: the doc test
(tests/docs/test_readme_commands.py) running the README's own text at a small size, or a named test elsewhere that
runs the same command; commands for a host this machine is not (sudo, a cluster, a GPU) name the test that checks
what they rely on, or say why nothing can. tests/docs/test_readme_commands.py fails on a command no entry covers
and on an entry that no longer matches any command, so the list stays in step with the READMEs.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclasses.dataclass(frozen=True)
class Snippet:
    path: Path
    line: int  # of the command (its first line) or of the block's fence
    language: str  # "bash" for shell lines, "python" for a block
    text: str  # the command, continuations joined, comments kept out; a python block as written

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def documents(root: Path = REPO) -> list[Path]:
    """README.md, every folder's README.md and docs/**/*.md (hidden folders, builds and the venv aside)."""
    found = [root / "README.md"]
    for path in sorted(root.rglob("*.md")):
        rel = path.relative_to(root)
        if any(part.startswith(".") or part in ("build", "dist", "node_modules") for part in rel.parts):
            continue
        if (path.name == "README.md" and len(rel.parts) > 1 and rel.parts[0] != "tests") or rel.parts[0] == "docs":
            found.append(path)
    return found


def snippets(root: Path = REPO) -> Iterator[Snippet]:
    for path in documents(root):
        lines = path.read_text(encoding="utf-8").splitlines()
        index = 0
        while index < len(lines):
            fence = _FENCE.match(lines[index])
            if not fence:
                index += 1
                continue
            start, language, body = index, fence.group(2), []
            index += 1
            while index < len(lines) and not lines[index].strip().startswith("```"):
                body.append((index + 1, lines[index]))
                index += 1
            index += 1
            if language in SHELL_LANGUAGES:
                yield from _shell_lines(path, body)
            elif language == "python":
                yield Snippet(path, start + 1, "python", "\n".join(text for _, text in body) + "\n")


def _shell_lines(path: Path, body: list[tuple[int, str]]) -> Iterator[Snippet]:
    pending, first = "", 0
    for number, raw in body:
        text = _without_comment(raw).rstrip()
        if not pending:
            first = number
        pending = f"{pending} {text.strip()}" if pending else text.strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        if pending:
            yield Snippet(path, first, "bash", pending)
        pending = ""


def _without_comment(line: str) -> str:
    """The line up to a ``#`` that starts a shell comment (outside quotes, at a word's start)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def simple_commands(text: str) -> list[list[str]]:
    """The argv of each simple command of a shell line (split at ``&&``, ``||``, ``;``, ``|`` and ``&``; redirections
    dropped with their target)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    tokens = list(lexer)
    skip = False
    for token in tokens:
        if skip:
            skip = False
            continue
        if token in ("&&", "||", ";", "|", "&"):
            commands.append([])
        elif token in (">", ">>", "<", "2>", "2>&1"):
            skip = token != "2>&1"
        else:
            commands[-1].append(token)
    return [argv for argv in commands if argv]


def is_wanrt(argv: list[str]) -> bool:
    return Path(argv[0]).name == "wanrt" or argv[:3] == ["python", "-m", "wanrt.cli"]


def wanrt_argv(argv: list[str]) -> list[str]:
    """The arguments after ``wanrt``, the README's placeholders made concrete: a bare ``...`` (more options) is
    dropped, ``[--flag value]`` (optional) kept without its brackets; ``...`` as an option's value stays a value."""
    args = argv[1:] if Path(argv[0]).name == "wanrt" else argv[3:]
    out: list[str] = []
    for token in args:
        if token in ("...", "…") and not (out and out[-1].startswith("--")):
            continue
        out.append(token.strip("[]") if token.startswith("[") or token.endswith("]") else token)
    return [token for token in out if token]


@dataclasses.dataclass(frozen=True)
class Coverage:
    """The snippets ``pattern`` (a regular expression searched in the text) matches are run by ``test``
    ("tests/...py::name"); ``host`` says what this machine cannot be for the command (root on an SELinux host, a
    cluster, a GPU): then ``test`` checks what the command relies on. wanrt commands are also parsed by the real
    argument parser, whatever runs them."""

    pattern: str
    test: str
    host: str = ""

    def matches(self, snippet: Snippet) -> bool:
        return re.search(self.pattern, snippet.text) is not None


DOC_TEST = "tests/docs/test_readme_commands.py"

COVERAGE: tuple[Coverage, ...] = (
    # The two commands of the README.
    Coverage(r"^python3 -m venv \.venv && \.venv/bin/pip install -e \. && \.venv/bin/wanrt generate",
             f"{DOC_TEST}::test_first_command_makes_a_clip_on_the_reef_model"),
    Coverage(r"^bash scripts/test\.sh$", ".ci/run", host="CI runs it on a clean clone"),
    # Installing extras: scripts/test.sh installs export, quant, bench and test into its venv.
    Coverage(r"^pip install -e '\.\[(export|quant|bench)[a-z,]*\]'", "scripts/test.sh"),
    Coverage(r"^pip install -e '\.\[tensorrt\]'", "tests/trt/test_trt_contract.py::test_contract",
             host="a GPU with TensorRT (the contract test imports the real bindings)"),
    # Export, precision, LoRA, quantize: the tiny Wan2.2 model through the same command line.
    Coverage(r"^wanrt export .*--lora", "tests/test_lora.py::test_export_cli_records_loras_and_refuses_lora_2_on_"
                                        "one_expert"),
    Coverage(r"^wanrt export ", "tests/test_lora.py::test_export_cli_records_loras_and_refuses_lora_2_on_one_expert"),
    Coverage(r"^wanrt quantize .*--dtype", "tests/test_precision.py::test_quantize_dtype_lowers_the_quantized_experts"),
    Coverage(r"^wanrt quantize ", "tests/quant/test_quantize.py::test_gate_refuses_and_writes_nothing"),
    # Generate.
    Coverage(r"^wanrt generate --model wan22-onnx --backend onnxruntime",
             f"{DOC_TEST}::test_generate_commands_run_on_stand_in_models"),
    Coverage(r"^wanrt generate --model Wan2\.2-T2V-A14B-Diffusers --backend torch",
             f"{DOC_TEST}::test_generate_commands_run_on_stand_in_models"),
    Coverage(r"^wanrt generate --model wan22-(lightning|int8) --(prompt|backend onnxruntime)",
             f"{DOC_TEST}::test_generate_commands_run_on_stand_in_models"),
    Coverage(r"^wanrt generate --prompt \"\.\.\.\" --step-cache",
             f"{DOC_TEST}::test_generate_commands_run_on_stand_in_models"),
    Coverage(r"^wanrt generate \.\.\. --memory-budget",
             "tests/test_memory_admission.py::test_generate_refuses_a_request_over_the_budget_before_running"),
    Coverage(r"^wanrt generate --model wan22-engines --backend tensorrt",
             "tests/trt/test_trt_contract.py::test_contract", host="a GPU with TensorRT"),
    Coverage(r"^wanrt generate --device cuda:0 --device cuda:1 --cfg-parallel",
             "tests/test_cfg_parallel.py::test_generate_cli_cfg_parallel_equals_one_device", host="two GPUs"),
    Coverage(r"^wanrt generate --model wan22-int8 --trust",
             "tests/trust/test_trust_provenance.py::test_generated_clip_carries_a_valid_manifest"),
    # Serve and clients.
    Coverage(r"^wanrt serve .*--backend tensorrt", "tests/trt/test_trt_contract.py::test_contract",
             host="a GPU with TensorRT"),
    Coverage(r"^wanrt serve .*--cfg-parallel", "tests/test_cfg_parallel.py::test_serve_accepts_pairs",
             host="two GPUs"),
    Coverage(r"^wanrt serve .*--http-listen", "tests/server/test_server_http.py::test_wanrt_serve_http_listen"),
    Coverage(r"^wanrt serve .*--memory-budget", "tests/server/test_server_memory.py"),
    Coverage(r"^wanrt serve .*--step-cache", "tests/server/test_server_fewer_calls.py"),
    Coverage(r"^wanrt serve ", "tests/server/test_server_cli.py::test_client_generate_writes_the_clip_the_audit_"
                               "log_names"),
    Coverage(r"wanrt client (health|describe) ", "tests/server/test_server_cli.py::test_client_health_and_describe"),
    Coverage(r"wanrt client generate ", "tests/server/test_server_cli.py::test_client_generate_writes_the_clip_the_"
                                        "audit_log_names"),
    Coverage(r"^curl -s http://127\.0\.0\.1:8000/v1/videos",
             "tests/server/test_server_http.py::test_curl_shapes_json_and_multipart"),
    Coverage(r"^from wanrt\.engine\.loader import load_pipeline", f"{DOC_TEST}::test_python_example_writes_a_clip"),
    Coverage(r"^import os\n\nfrom openai import OpenAI",
             "tests/server/test_server_http.py::test_openai_sdk_creates_polls_downloads_and_deletes"),
    Coverage(r"from wanrt\.server\.client import Client", "tests/server/test_server_cli.py"),
    Coverage(r"^import dashscope\nfrom dashscope import VideoSynthesis",
             "tests/server/test_server_dashscope.py::test_sdk_creates_waits_fetches_and_downloads"),
    Coverage(r"^requests\.post\(\"http://127\.0\.0\.1:8000/api/v1/services/aigc/video-generation",
             "tests/server/test_server_dashscope.py::test_article_client_gets_a_video_where_the_shape_fits"),
    Coverage(r"wanrt client batch prompts\.jsonl ",
             "tests/server/test_server_batch.py::test_200_lines_resume_after_a_kill_with_nothing_redone"),
    Coverage(r"wanrt token new ", "tests/server/test_server_config.py"),
    # TensorRT (GPU).
    Coverage(r"^wanrt (build-engines|verify --engines) ", "tests/trt/test_trt_contract.py::test_contract",
             host="a GPU with TensorRT"),
    # Measurement.
    Coverage(r"^wanrt bench --model reef/model", f"{DOC_TEST}::test_bench_on_the_reef_model_and_its_twin"),
    Coverage(r"^wanrt bench --model a14b-1l",
             "tests/benchmarks/test_bench_cli.py::test_bench_writes_json_markdown_and_plot_for_the_demo_model"),
    Coverage(r"^wanrt bench .*--device cuda",
             "tests/benchmarks/test_gpu_script.py::test_gpu_script_runs_every_job_at_reduced_size_and_writes_its_"
             "results", host="a GPU"),
    Coverage(r"^wanrt plan ", "tests/test_plan.py::test_cli_prints_every_stage_and_exits_1_when_one_does_not_fit"),
    Coverage(r"^from wanrt\.plan\.checkpoint import",
             "tests/test_plan.py::test_quantize_estimate_grows_with_the_calibration"),
    Coverage(r"python -m wanrt\.benchmarks\.(a14b_folder|export_memory) ",
             "tests/test_export_at_size.py::test_full_width_bf16_export_stays_within_its_plan"),
    # The quantize timing on a GPU box without network: wheels carried, the tree linked without installing wanrt.
    Coverage(r"(--find-links|-d) \.gpu-wheels |^W=\$\(mktemp -d\); mkdir \$W/wanrt|^for d in .*; do ln -s "
             r"|python -m wanrt\.benchmarks\.quantize_timing ",
             f"{DOC_TEST}::test_gpu_box_tree_links_every_package", host="a GPU box with CUDA torch and no network"),
    Coverage(r"^wanrt eval --against",
             "tests/evaluate/test_gate.py::test_gate_measures_each_setting_against_full_with_its_floors"),
    Coverage(r"scripts/(attention_benchmark|measure_memory|gate_tables|verified_load_memory)\.py",
             f"{DOC_TEST}::test_scripts_run"),
    # Trust.
    Coverage(r"^wanrt (keygen|sign|verify-signature) ", f"{DOC_TEST}::test_signing_commands"),
    Coverage(r"^wanrt provenance (show|verify)",
             "tests/trust/test_trust_provenance_default.py::test_verify_reports_trusted_valid_altered_and_missing"),
    Coverage(r"^wanrt qualify ",
             "tests/trust/test_trust_qualify.py::test_a_qualified_installation_gets_a_signed_passing_report"),
    Coverage(r"^wanrt audit verify ", "tests/server/test_server_audit_chain.py::test_cli_exits_1_naming_the_link"),
    # Deployment: root on an SELinux host, a container engine, a cluster.
    Coverage(r"^sudo (dnf|install|restorecon|cp) ", "tests/deploy/test_deploy_selinux.py",
             host="root on a RHEL/Fedora host with SELinux enforcing"),
    Coverage(r"^sudo selinux/install\.sh", "tests/deploy/test_deploy_shell.py",
             host="root on a RHEL/Fedora host with SELinux enforcing"),
    Coverage(r"^(docker|podman) (compose|build) ", "tests/deploy/test_deploy_podman.py",
             host="a container engine (CI builds and serves the CPU image with podman)"),
    Coverage(r"^kubectl ", "tests/deploy/test_deploy_k8s.py", host="a Kubernetes cluster"),
)


def coverage_of(snippet: Snippet) -> Coverage | None:
    return next((entry for entry in COVERAGE if entry.matches(snippet)), None)
