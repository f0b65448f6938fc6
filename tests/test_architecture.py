"""The package's shape, checked from its source: layers that import only downward, no import circles,
imports at the top, and run-directory file names spelled only in laffi/layout.py."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "laffi"

# Lowest first. A module may import its own layer or a lower one; within a layer the module graph
# below must still have no circles.
LAYERS = [
    {"records", "config", "layout"},
    {"data", "prompts", "models", "packing", "tree_attention", "cross_entropy", "systems"},
    {"analysis", "backends", "annotators", "distributed"},
    {"stages", "human"},
    {"report"},
    {"experiments"},
    {"cli"},
]
# The command line imports the stages inside each command: they load torch, which `laffi --help`
# does not need (cli.py and the annotation app's commands say so in their docstrings).
LAZY_IMPORTERS = {"laffi.cli", "laffi.human.commands"}
RUN_FILES = ("config.yaml", "train.jsonl", "eval.jsonl", "shots.jsonl", "answers.jsonl", "feedback.jsonl",
             "feedback.human.jsonl", "annotations.db", "predictions.jsonl", "metrics.json", "train_log.jsonl",
             "summary.json", "results.json", "results.md", "run_info.json", "report.html", "stats.json",
             "attention.json", "experiment.yaml", "experiment.json", "experiment.md", "selections.jsonl",
             "adapter_model.safetensors", "adapter_config.json")
PATH_LIKE = re.compile(r"^[\w./-]*(" + "|".join(re.escape(name) for name in RUN_FILES) + r")$")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("laffi", *path.relative_to(PACKAGE).with_suffix("").parts))
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = modules()


def resolve(name: str) -> str | None:
    """The laffi module an imported name lives in (`laffi.records.QAExample` -> `laffi.records`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path) -> list[tuple[str, bool]]:
    """(laffi module imported, at the module's top?) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("laffi"):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("laffi")]
        else:
            continue
        found += [(target, id(node) in top) for target in map(resolve, names) if target]
    return found


def layer(module: str) -> int:
    part = module.split(".")[1]
    return next(i for i, members in enumerate(LAYERS) if part in members)


GRAPH = {name: {target for target, _ in imports(path) if target != name} for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert {name.split(".")[1] for name in MODULES if name != "laffi"} == set().union(*LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_or_sideways_only(module):
    upward = sorted(t for t in GRAPH[module] if layer(t) > layer(module))
    assert not upward, f"{module} imports from a higher layer: {upward}"


def test_no_import_circles():
    # depth-first search for a back edge; the cycle it finds is named in the failure
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(GRAPH[node]):
            if state.get(target) == "open":
                return trail[trail.index(target):] + [target] if target in trail else [node, target]
            if target not in state and (cycle := visit(target, trail + [target])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(GRAPH):
        if start not in state:
            cycle = visit(start, [start])
            assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(set(MODULES) - LAZY_IMPORTERS))
def test_laffi_imports_are_at_the_top(module):
    nested = sorted({target for target, at_top in imports(MODULES[module]) if not at_top})
    assert not nested, f"{module} imports {nested} inside a function"


@pytest.mark.parametrize("module", sorted(set(MODULES) - {"laffi.layout"}))
def test_run_directory_file_names_are_spelled_in_layout_only(module):
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    spelled = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and id(node) not in docstrings
               and isinstance(node.value, str) and PATH_LIKE.match(node.value.strip())]
    assert not spelled, f"{module} spells {spelled}; use laffi.layout"


def test_the_checker_sees_an_upward_import_and_a_file_name():
    # the checks above can fail: a lower layer reaching up, and a spelled file name, are both found
    tree = ast.parse('from laffi.experiments.run import run\nPATH = "eval/base/predictions.jsonl"\n')
    node = tree.body[0]
    assert isinstance(node, ast.ImportFrom) and layer(resolve(node.module)) > layer("laffi.records")
    assert PATH_LIKE.match(tree.body[1].value.value)
