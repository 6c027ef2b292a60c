"""Dependencies point one way: down the layers, without circles (docs/ARCHITECTURE.md).

Reads every import of ``src/worldvla`` with ``ast`` — function-level imports included, since
a lazy import is still a dependency — and fails on an import that points up the layer order
below, on an import circle between modules, on a package or top-level module that has no
place in the order, and on inference code that reaches the training package.

The layer order is written once here and once in docs/ARCHITECTURE.md; change both together
(the last test checks that they agree).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "worldvla"
ARCHITECTURE = SRC.parents[1] / "docs" / "ARCHITECTURE.md"

# Top to bottom. A unit (a subpackage or a top-level module of worldvla) may import units of
# its own layer or of any layer below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "cli", "commands"),  # entry points: parse, call a library function
    ("ablation",),  # controlled comparisons over the pipeline
    ("pipeline",),  # collect -> tokenize -> train -> evaluate, staged and resumable
    ("experiments", "libero_presets", "convert"),  # experiment recipes; checkpoint conversion
    ("eval",),  # closed-loop and offline evaluation, world-model metrics, reports
    ("serving",),  # the policy over a websocket
    ("train",),  # the training loop, losses, optimizer, resume
    ("policy", "world_model"),  # the two inference roles
    ("artifacts",),  # checkpoints and run directories: written by train, read by everyone
    ("data",),  # episode store, demo collection, token cache, datasets, data layout
    ("envs",),  # simulator adapters, task suites and benchmark constants
    ("model",),  # ModelConfig and the model sizes, transformer, mask, decoding, construction
    ("sequence",),  # action-model / world-model samples
    ("tokenizers",),  # action, state, text and image tokenizers
    ("vocab",),  # token ids
    ("utils",),  # io, paths, registry, provenance, field defaults, resumable stages
    ("errors",),  # the error types
)

# Inference code that must not reach the training package, even indirectly.
INFERENCE = ("worldvla.policy", "worldvla.world_model", "worldvla.serving.server", "worldvla.artifacts")
# Builds a checkpoint without training: may read the training config, never the loop.
NO_TRAINING_LOOP = ("worldvla.serving.random_checkpoint",)


def _modules() -> dict[str, Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        parts = ["worldvla", *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _graph() -> dict[str, set[str]]:
    """``{module: modules of worldvla it imports}`` (module-level and function-level imports)."""
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for target in targets:
                while target and target not in mods:  # an attribute of a module -> the module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
                    break
        graph.setdefault(name, set())
    return graph


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _rank() -> dict[str, int]:
    return {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_every_unit_has_a_layer():
    rank = _rank()
    missing = sorted({_unit(m) for m in _graph()} - set(rank))
    assert not missing, f"place these in LAYERS (and docs/ARCHITECTURE.md): {missing}"


def test_no_import_points_up_the_layers():
    rank = _rank()
    upward = [
        f"{a} -> {b} (layer {rank[_unit(a)]} imports layer {rank[_unit(b)]})"
        for a, targets in sorted(_graph().items())
        for b in sorted(targets)
        if rank.get(_unit(b), 0) < rank.get(_unit(a), 0)
    ]
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_no_import_circles():
    cycles = [sorted(c) for c in _cycles(_graph())]
    assert not cycles, f"import circles: {cycles}"


def test_inference_never_reaches_training():
    graph = _graph()
    for start in INFERENCE:
        modules = [m for m in graph if m == start or m.startswith(start + ".")]
        assert modules, start
        for m in modules:
            training = sorted(t for t in _reach(graph, m) if t.startswith("worldvla.train"))
            assert not training, f"{m} imports training code: {training}"
    for m in NO_TRAINING_LOOP:
        assert "worldvla.train.loop" not in _reach(_graph(), m), f"{m} imports the training loop"


def test_the_walker_sees_function_level_and_submodule_imports():
    """The checks above are only as good as the import reader: it must see lazy imports."""
    graph = _graph()
    # artifacts.checkpoint loads the image tokenizer with a function-level import.
    assert "worldvla.tokenizers.image_loader" in graph["worldvla.artifacts.checkpoint"]
    # `from worldvla.train import checkpoint as ckpt` is an import of the submodule.
    assert "worldvla.train.checkpoint" in graph["worldvla.train.loop"]


def test_the_architecture_page_draws_the_same_layers():
    """docs/ARCHITECTURE.md's layer table (``| 4 | `experiments` | ...``) names the units of LAYERS."""
    drawn: dict[int, list[str]] = defaultdict(list)
    for m in re.finditer(r"^\| (\d+) \| ((?:`[^`]+`(?:, )?)+) \|", ARCHITECTURE.read_text(), re.M):
        drawn[int(m[1])] += re.findall(r"`([^`]+)`", m[2])
    assert [tuple(drawn[i]) for i in sorted(drawn)] == list(LAYERS)
