"""The package's layout: no import cycle among lab6 modules, argument parsing only in the CLI, a torch-free CLI."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lab6"
CLI_MODULES = {"cli", "__main__"}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(lab6 modules, other top-level packages) that a module imports anywhere in its body."""
    mods = {p.stem for p in PACKAGE.glob("*.py")}
    own, other = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            own |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            (own if node.module.split(".")[0] == "lab6" else other).add(
                node.module.split(".")[1] if node.module.startswith("lab6.") else node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "lab6" and len(parts) > 1:
                    own.add(parts[1])
                else:
                    other.add(parts[0])
    return own & mods, other


def _graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p)[0] for p in PACKAGE.glob("*.py")}


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
    cycle = find_cycle(_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_only_the_cli_parses_arguments():
    offenders = [p.name for p in PACKAGE.glob("*.py") if p.stem not in CLI_MODULES and "argparse" in _imports(p)[1]]
    assert not offenders, f"argparse imported outside lab6/cli.py: {', '.join(offenders)}"


def test_import_lab6_and_its_cli_load_no_torch():
    code = "import sys, lab6, lab6.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent).returncode == 0
