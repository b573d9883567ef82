"""The package's layout: no import cycle among lab6 modules (lab6/synth/ included), no upward import,
argument parsing only in the CLI, a torch-free CLI."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lab6"
CLI_MODULES = {"cli", "__main__"}


def _name(path: Path) -> str:
    """A module's dotted name inside lab6: 'evaluator', 'synth' (its __init__), 'synth.render'; '__init__' for lab6's."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _package(name: str, path: Path) -> list[str]:
    """The package a module's relative imports start from, as dotted parts ([] for lab6 itself)."""
    parts = name.split(".") if name != "__init__" else []
    return parts if path.name == "__init__.py" else parts[:-1]


def _own(parts: list[str]) -> set[str]:
    """The lab6 module that `lab6.<parts>` names: the longest known prefix."""
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in MODULES:
            return {".".join(parts[:n])}
    return set()


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(lab6 modules, other top-level packages) that a module imports anywhere in its body."""
    name = _name(path)
    base = _package(name, path)
    own, other = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                start = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            elif node.module.split(".")[0] == "lab6":
                start = []
            else:
                other.add(node.module.split(".")[0])
                continue
            mod = [p for p in (node.module or "").split(".") if p and not (not node.level and p == "lab6")]
            own |= _own(start + mod)
            for a in node.names:  # `from . import labels`, `from .synth import writer`
                own |= {m for m in _own(start + mod + [a.name]) if m == ".".join(start + mod + [a.name])}
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "lab6":
                    own |= _own(parts[1:])
                else:
                    other.add(parts[0])
    # a module of a sub-package imported from outside it runs that package's __init__ first
    own |= {m.rsplit(".", 1)[0] for m in own if "." in m and not name.startswith(m.rsplit(".", 1)[0])}
    return own - {name}, other


def _graph() -> dict[str, set[str]]:
    return {name: _imports(path)[0] for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"train": {"sample"}, "sample": {"checkpoints", "train"}, "checkpoints": set()}) in (
        ["train", "sample", "train"], ["sample", "train", "sample"])
    assert find_cycle({"train": {"sample"}, "sample": {"checkpoints"}, "checkpoints": set()}) is None


def test_no_import_cycle_among_lab6_modules():
    graph = _graph()
    assert {"synth", "synth.render", "synth.writer"} <= set(graph) and "labels" in graph["synth.design"]
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


# Imports against the layers (CONTRIBUTING.md): the judge knows no renderer, the renderer and the noise schedules
# draw no figures, training needs no sampling module.
UPWARD = (("evaluator", "synth"), ("synth.writer", "plots"), ("schedules", "plots"), ("train", "sample"))


def test_no_upward_imports():
    graph = _graph()
    assert "synth" in graph["checker_train"] and "plots" in graph["sample"]  # the walk sees these kinds of edge
    found = [f"{a} -> {b}" for a, b in UPWARD if any(m == b or m.startswith(b + ".") for m in graph[a])]
    assert not found, f"upward imports: {', '.join(found)}"


def test_only_the_cli_parses_arguments():
    offenders = [str(p.relative_to(PACKAGE)) for name, p in MODULES.items()
                 if name not in CLI_MODULES and "argparse" in _imports(p)[1]]
    assert not offenders, f"argparse imported outside lab6/cli.py: {', '.join(offenders)}"


def test_import_lab6_and_its_cli_load_no_torch():
    code = "import sys, lab6, lab6.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent).returncode == 0
