"""No module decides by a system's name: what a system is for is a field, read from its file or the run's
config, never guessed from what it is called (laffi-then-sft is a LaFFi system, sft-reviewed an SFT one).

    python -m pytest tests/test_no_name_decisions.py

The rule, checked on the source of every module under src/laffi (an AST check, since names share words):
a string literal equal to the name of a packaged system (laffi.systems.packaged_systems(): base, sft,
laffi, laffi-mix, ...) may not appear

1. as a side of a comparison (`==`, `!=`, `in`, `not in`, `is`, ...), alone or inside a tuple, list or
   set literal that is a side: `system == "sft"`, `name in ("sft", "base")`, `"laffi" in name` (a
   substring test is a comparison too);
2. as the argument of `str.startswith` / `str.endswith`, or as a `case` pattern of a `match`;
3. in a tuple, list or set literal assigned at a module's top level (`BASELINES = ("sft", "base")`,
   `TRAINED = frozenset({"laffi"})`), or anywhere else in a tuple, list or set literal of two or
   more strings of which two or more are packaged system names (a local ordering
   `("base", "sft", "laffi")`): a list of names is a role handed out by name.

Families (laffi.systems.System.family: base, sft, laffi) share the words too, so code never compares
a family with a literal either: it looks a family up in a table keyed by family (laffi.report.plots:
COLORS, SHADES, LINESTYLES). Dict keys are not checked, since the test cannot tell a table keyed by family from one
keyed by name: that is left to review.

Allowed, each with its reason (ALLOWED: file, and the top-level definition the literal sits in):
the training SETS (laffi.systems.SETS: sft, laffi, refine, ...) are named like the systems that train on
them, and the config section that names which systems a run trains and pairs others against
(laffi.config.SystemsConfig: names, compare_with) holds names as data, chosen by the user.
"""

from __future__ import annotations

import ast
from pathlib import Path

from laffi.systems import packaged_systems

PACKAGE = Path(__file__).parent.parent / "src" / "laffi"
NAMES = frozenset(packaged_systems())

# (path under src/laffi, top-level definition) -> why its literals name systems or sets legitimately
ALLOWED = {
    ("systems/__init__.py", "SETS"): "the training sets' names, which the build stage makes (not systems)",
    ("config.py", "SystemsConfig"): "which systems a run trains and pairs others against: the user's data",
    ("experiments/grid.py", "ExperimentConfig"): "which systems an experiment compares, and its baseline: data",
}


def _strings(node: ast.AST) -> list[str]:
    """The str constants of a literal: itself, or the elements of a tuple, list or set literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [value for element in node.elts for value in _strings(element)]
    return []


def _names_in(node: ast.AST) -> list[str]:
    return [value for value in _strings(node) if value in NAMES]


def decisions(source: str) -> list[tuple[int, str, str]]:
    """(line, top-level definition, what) for each literal system name the rule forbids in `source`."""
    tree = ast.parse(source)
    found = []
    for top in tree.body:
        targets = getattr(top, "targets", None) or [getattr(top, "target", None)]
        scope = getattr(top, "name", None) or next((t.id for t in targets if isinstance(t, ast.Name)), "")
        module_level = isinstance(top, (ast.Assign, ast.AnnAssign))
        for node in ast.walk(top):
            hits: list[str] = []
            if isinstance(node, ast.Compare):
                hits = [name for side in (node.left, *node.comparators) for name in _names_in(side)]
                what = "compared with"
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ("startswith", "endswith")):
                hits = [name for argument in node.args for name in _names_in(argument)]
                what = f"{node.func.attr}"
            elif isinstance(node, ast.MatchValue):
                hits, what = _names_in(node.value), "a case of"
            elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                strings = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                named = [s for s in strings if s in NAMES]
                listed = named if module_level or (len(strings) >= 2 and len(named) >= 2) else []
                hits, what = listed, "a module's list of names" if module_level else "a list of names"
            if hits:
                found.append((node.lineno, scope, f"{what} {', '.join(map(repr, hits))}"))
    return sorted(set(found))


def test_the_rule_catches_the_ways_a_name_decides():
    assert NAMES >= {"base", "sft", "laffi", "laffi-then-sft", "sft-reviewed"}
    for source in ('if system == "sft": pass', 'x = name in ("sft", "base")', 'x = "laffi" in name',
                   'x = name.startswith("laffi")', 'BASELINES = ("sft", "base")',
                   'def f(s):\n    return {n: i for i, n in enumerate(["base", "sft", "laffi"])}',
                   'match name:\n    case "sft":\n        pass', 'TRAINED = frozenset({"laffi"})'):
        assert decisions(source), source
    for source in ('x = system.family', 'x = COLORS.get(family)', 'x = name == "refine"', 'x = split == "dev"',
                   'def f(system):\n    return [("base", "--"), (system, "-")]', 'def f():\n    return ["laffi"]'):
        assert not decisions(source), source


def test_no_module_decides_by_a_system_name():
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for line, scope, what in decisions(path.read_text(encoding="utf-8")):
            if (relative, scope) not in ALLOWED:
                offences.append(f"src/laffi/{relative}:{line} ({scope}): {what}")
    assert not offences, ("decided by a system's name; give the system a field (laffi.systems: family) or "
                          "the run a setting (systems.compare_with) instead:\n" + "\n".join(offences))


def test_the_allowed_places_still_exist():
    """An allowance outlives its reason silently otherwise."""
    for relative, scope in ALLOWED:
        tree = ast.parse((PACKAGE / relative).read_text(encoding="utf-8"))
        defined = {getattr(node, "name", None) for node in tree.body}
        defined |= {t.id for node in tree.body for t in getattr(node, "targets", []) if isinstance(t, ast.Name)}
        assert scope in defined, (relative, scope)
