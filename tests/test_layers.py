"""Imports point one way: down the layers below, never up, never round in a cycle.

The layers, top to bottom (a module may import its own layer and those below):

    commands      what a user runs: `wanrt` and each stage's subcommands (cli.py), the `python -m` tools
    tools         measurement and qualification that drive the whole product (benchmarks, qualify, verify)
    transports    gRPC and HTTP serving and the gRPC client (server/)
    quantize      Q/DQ quantization of an exported artifact (quant/)
    export        ONNX export from a diffusers folder (export/)
    estimates     what each offline stage needs in memory, disk and time (plan/, the FLOP formula, GPU peaks)
    evaluate      prompt adherence and quality measures (evaluate/)
    reef          the demo model's world, networks and training (reef/)
    trust         signatures, provenance, the audit chain, confinement (trust/)
    engine        pipeline, backends, memory admission, artifacts (engine/)
    shared        errors, measures, output-folder publishing (wanrt/*.py but the command)

A module lands in the layer that names it exactly, else in the first layer one of whose patterns matches its dotted
name; a module no pattern matches fails the test until it is placed.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("commands", ("wanrt.cli", "wanrt.*.cli", "wanrt.*_cli", "wanrt.reef.train", "wanrt.reef.recover",
                  "wanrt.reef.denoise_check",
                  "wanrt.reef.latent_check", "wanrt.reef.samples", "wanrt.quant.compare_paths",
                  "wanrt.server.codegen", "wanrt.server.batch")),
    # `wanrt verify`'s checks drive quantize's trajectory recorder for their torch reference: a tool on the engines.
    ("tools", ("wanrt.benchmarks", "wanrt.benchmarks.*", "wanrt.trust.qualify", "wanrt.engine.tensorrt.verify",
               "wanrt.engine.tensorrt.torch_reference")),
    ("transports", ("wanrt.server", "wanrt.server.*", "wanrt.proto", "wanrt.proto.*")),
    ("quantize", ("wanrt.quant", "wanrt.quant.*")),
    ("export", ("wanrt.export", "wanrt.export.*")),
    # What an offline stage will need (export refuses at start what its plan cannot fit), from FLOPs and peaks.
    ("estimates", ("wanrt.plan", "wanrt.plan.*", "wanrt.benchmarks.flops", "wanrt.benchmarks.peaks")),
    ("evaluate", ("wanrt.evaluate", "wanrt.evaluate.*")),
    ("reef", ("wanrt.reef", "wanrt.reef.*")),
    ("trust", ("wanrt.trust", "wanrt.trust.*")),
    ("engine", ("wanrt.engine", "wanrt.engine.*")),
    ("shared", ("wanrt", "wanrt.*")),
)

# Third-party packages that only an extra installs (pyproject.toml's optional-dependencies, by import name): an
# internal module that imports one of them at its top may be imported inside a function, so that the commands that
# do not need it still run without it.
OPTIONAL_IMPORTS = frozenset({"torch", "diffusers", "transformers", "accelerate", "onnxscript", "sentencepiece",
                              "peft", "tensorrt", "pycuda", "modelopt", "onnx_graphsurgeon", "onnxslim", "lief",
                              "matplotlib", "cupy", "safetensors", "huggingface_hub"})


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the wanrt module imported (a submodule named by `from package import name` included)
    path: Path
    line: int
    in_function: bool
    commented: bool  # a comment on the import's lines or the line above: why it is where it is


def _package_dirs() -> dict[str, str]:
    """folder (relative, POSIX) -> dotted package, for every package pyproject.toml lists."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    package_dir = config.get("package-dir", {})
    folders = {}
    for package in config["packages"]:
        parts = package.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in package_dir:
                folders[str(Path(package_dir[prefix], *parts[cut:]).as_posix())] = package
                break
    return folders


def modules(root: Path = REPO) -> dict[str, Path]:
    """Every shipped module by dotted name (the generated gRPC code aside: it imports only protobuf)."""
    found = {}
    for folder, package in _package_dirs().items():
        for path in sorted((root / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            if not name.startswith("wanrt.server.v1"):
                found[name] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(known: dict[str, Path]) -> Iterator[Import]:
    for source, path in known.items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text)
        package = source if path.stem == "__init__" else source.rpartition(".")[0]
        for node, in_function in _walk(tree, False):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                names = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            span = lines[node.lineno - 2: node.end_lineno]
            commented = any("#" in line for line in span)
            for name in names:
                target = _resolve(name, known) if name.startswith("wanrt") else None
                if target is not None and target != source:
                    yield Import(source, target, path, node.lineno, in_function, commented)


def _walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        yield child, in_function
        yield from _walk(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))


def layer_of(module: str) -> int | None:
    """The layer naming ``module`` exactly, else the first one with a pattern that matches it."""
    for index, (_, patterns) in enumerate(LAYERS):
        if module in patterns:
            return index
    for index, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return index
    return None


def up_pointing(found: list[Import]) -> list[str]:
    problems = []
    for imp in found:
        source, target = layer_of(imp.source), layer_of(imp.target)
        if source is not None and target is not None and target < source:
            problems.append(f"{imp.path.relative_to(REPO)}:{imp.line}: {imp.source} ({LAYERS[source][0]}) imports "
                            f"{imp.target} ({LAYERS[target][0]}), a layer above it")
    return problems


def cycles(found: list[Import]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), over every import, deferred ones included: a
    cycle broken only by hiding one side inside a function is still a cycle to the reader."""
    graph: dict[str, set[str]] = {}
    for imp in found:
        graph.setdefault(imp.source, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def optional_loads(known: dict[str, Path], found: list[Import]) -> dict[str, frozenset[str]]:
    """Per module, the optional third-party packages importing it loads: its own top-level imports and those of the
    wanrt modules (and their parent packages) it imports at top level, transitively."""
    top_level: dict[str, set[str]] = {}
    for imp in found:
        if not imp.in_function:
            top_level.setdefault(imp.source, set()).add(imp.target)
    own = {name: _third_party_top_level(path) & OPTIONAL_IMPORTS for name, path in known.items()}
    loads: dict[str, frozenset[str]] = {}
    for name in known:
        seen, todo, out = {name}, [name], set()
        while todo:
            current = todo.pop()
            out |= own[current]
            parts = current.split(".")
            parents = [".".join(parts[:cut]) for cut in range(2, len(parts))]
            for dep in [*top_level.get(current, ()), *(p for p in parents if p in known)]:
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        loads[name] = frozenset(out)
    return loads


def _third_party_top_level(path: Path) -> set[str]:
    names = set()
    for node, in_function in _walk(ast.parse(path.read_text(encoding="utf-8")), False):
        if in_function:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def needless_deferred(found: list[Import], known: dict[str, Path]) -> list[str]:
    """Imports of wanrt modules inside functions that load no optional package (move them to the top), or that do
    but say nothing about it (add the comment). Commands are exempt: each defers its stage's code to the handler so
    that `wanrt --help` and `wanrt generate` load neither torch nor the other stages (wanrt/cli.py)."""
    problems = []
    loads = optional_loads(known, found)
    for imp in sorted(set(found), key=lambda i: (str(i.path), i.line, i.target)):
        if not imp.in_function or layer_of(imp.source) == 0:
            continue
        needs = loads[imp.target]
        where = f"{imp.path.relative_to(REPO)}:{imp.line}: {imp.target}"
        if not needs:
            problems.append(f"{where} loads no optional package: import it at the top of the module")
        elif not imp.commented:
            problems.append(f"{where} is deferred for {', '.join(sorted(needs))}: say so in a comment")
    return problems


def test_every_module_has_a_layer():
    unplaced = [name for name in modules() if layer_of(name) is None]
    assert not unplaced, f"place these modules in a layer (tests/test_layers.py LAYERS): {unplaced}"


def test_no_import_points_up_a_layer():
    problems = sorted(set(up_pointing(list(imports(modules())))))
    assert not problems, "\n".join(problems)


def test_no_import_cycle():
    found = cycles(list(imports(modules())))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(group) for group in found)



def test_the_checks_catch_a_planted_up_import_and_a_cycle():
    def planted(source: str, target: str) -> Import:
        return Import(source, target, REPO / "engine" / "planted.py", 1, in_function=True, commented=False)

    [problem] = up_pointing([planted("wanrt.engine.planted", "wanrt.server.app")])
    assert "wanrt.engine.planted (engine) imports wanrt.server.app (transports)" in problem
    assert not up_pointing([planted("wanrt.server.app", "wanrt.engine.planted")])
    assert cycles([planted("wanrt.a", "wanrt.b"), planted("wanrt.b", "wanrt.c"), planted("wanrt.c", "wanrt.a"),
                   planted("wanrt.c", "wanrt.d")]) == [["wanrt.a", "wanrt.b", "wanrt.c"]]
