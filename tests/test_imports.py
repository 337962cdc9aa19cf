"""The package's import graph, read with ast: no loop, no upward import, and function-level imports only of the
heavy libraries that the fast checks (config errors, the planner, the CLIs' --help) must not pay for."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "slt_hydra"

# Lower layers know nothing of higher ones. A new module gets a layer here, or the test below fails.
LAYERS = {
    0: {"errors", "schema", "metrics", "machine", "quiet"},  # leaves: no slt_hydra imports
    # CPU precision, the composed config, the corpora, MLflow, scoring in a helper process
    1: {"precision", "config", "data", "tracking", "scorer"},
    2: {"fewshot", "distributed", "pose", "pose_model"},  # pose: keypoint files; pose_model: encoder, soft tokens
    3: {"models", "pose_demo"},  # find, load, quantize; LoRA description | the synthetic pose corpus
    4: {"memory"},  # the planner's maths
    5: {"validate", "generation", "training"},
    6: {"kinds", "kinds.base", "kinds.chat", "kinds.seq2seq", "kinds.pose"},  # one implementation per model kind
    7: {"run", "saved_run"},  # the story of one job; a trained run reloaded
    8: {"__main__", "translate", "merge", "plan", "score", "report", "extract"},  # command lines
}
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}

# What may be imported inside a function, and why it is not at the top of the module.
LAZY = {
    "torch": "a 2-4 s import; validation, the planner and --help run without it",
    "transformers": "imports torch",
    "peft": "imports torch",
    "safetensors": "safetensors.torch imports torch (merge's pose encoder beside the merged model)",
    "trl": "imports torch",
    "datasets": "imports pyarrow and pandas (1-2 s); only a job that trains needs it",
    "mlflow": "a 2-3 s import; config errors and the planner end before anything is logged",
    "matplotlib": "only `report` draws plots",
    "rouge_score": "imports nltk (seconds); only scoring needs it",
    # slt_hydra.extract runs in a venv of its own (mediapipe's, docs/pose.md) and says in one line what is
    # missing there; pose.py reads keypoints only in pose runs
    "pose_format": "extract names it when its venv lacks it; only dataset.input=pose reads keypoints",
    "simple_video_utils": "pose-format's video reader: only extract reads video, in its own venv",
    "tqdm": "extract's progress bar, in its own venv",
    "bitsandbytes": "imports torch; only a 4-bit run on CPU reaches the weight unpacking",
    "readline": "changes input() for the whole process: only the interactive translate loop asks for it",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__") or "__init__"


def imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """(slt_hydra modules imported anywhere in the file, [(line, top-level library)] imported inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    inner_nodes = {id(node) for func in ast.walk(tree) if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(func)}
    ours, inner = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.level == 0 else [f"slt_hydra.{node.module}"]
            if node.module == "slt_hydra":  # from slt_hydra import data, machine
                names = [f"slt_hydra.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("slt_hydra."):
                target = name.removeprefix("slt_hydra.")
                # `from slt_hydra.kinds.base import X` and `from slt_hydra.kinds import base` both name a module
                while target and target not in LAYER_OF and "." in target:
                    target = target.rsplit(".", 1)[0]
                ours.add(target)
            elif id(node) in inner_nodes:
                inner.append((node.lineno, name.split(".")[0]))
    return ours, inner


GRAPH = {module_name(path): imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def find_loop(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as [a, b, ..., a], or None."""
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
            if nxt not in state and (loop := visit(nxt, trail + [nxt])):
                return loop
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (loop := visit(start, [start])):
            return loop
    return None


def test_every_module_has_a_layer():
    missing = sorted(set(GRAPH) - set(LAYER_OF) - {"__init__"})
    assert not missing, f"add {missing} to LAYERS in tests/test_imports.py"
    assert set(LAYER_OF) <= set(GRAPH), f"LAYERS names modules that are gone: {sorted(set(LAYER_OF) - set(GRAPH))}"


def test_no_import_loop():
    graph = {module: {m for m in ours if m != module} for module, (ours, _) in GRAPH.items()}
    assert find_loop(graph) is None, " -> ".join(find_loop(graph))


def test_the_loop_finder_finds_a_loop():
    assert find_loop({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_loop({"a": {"b"}, "b": set()}) is None


def test_no_upward_import():
    upward = [f"{module} (layer {LAYER_OF[module]}) imports {target} (layer {LAYER_OF[target]})"
              for module, (ours, _) in GRAPH.items() if module in LAYER_OF
              for target in ours if target in LAYER_OF and LAYER_OF[target] > LAYER_OF[module]]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_function_level_imports_are_only_the_heavy_libraries(module):
    _, inner = GRAPH[module]
    unexplained = [f"slt_hydra/{module.replace('.', '/')}.py:{line} imports {name}"
                   for line, name in inner if name not in LAZY]
    assert not unexplained, ("import these at the top of the module, or add the library to LAZY with the "
                             "reason it must wait:\n" + "\n".join(unexplained))
