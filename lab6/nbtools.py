"""Keep the committed notebooks clean: outputs only where nbval checks them (the `nbval-check-output` cell tag).

    python -m lab6.nbtools check            # exit 1 if a committed notebook carries stray outputs
    python -m lab6.nbtools refresh RUN_DIR  # copy checked outputs from executed notebooks in RUN_DIR/notebooks
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import nbformat

from .io import write_text
from .run import NOTEBOOK_DIR, NOTEBOOKS

CHECK_TAG = "nbval-check-output"  # nbval compares these cells' outputs (with --nbval-lax)


def is_checked(cell) -> bool:
    """True for a code cell whose output nbval compares: one tagged `nbval-check-output`."""
    return cell.cell_type == "code" and CHECK_TAG in cell.get("metadata", {}).get("tags", [])


def problems(nb, name: str = "notebook") -> list[str]:
    """Why a committed notebook is not clean: stray outputs, execution counts, a bad parameters cell."""
    out = []
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(params) != 1:
        out.append(f"{name}: expected exactly one cell tagged 'parameters', found {len(params)}")
    else:
        body = ast.parse(params[0].source).body
        for node in body:
            if not (isinstance(node, ast.Assign) and _is_literal(node.value)):
                out.append(f"{name}: the parameters cell may hold only `name = literal` lines "
                           f"(line {node.lineno})")
        from papermill.translators import papermill_translators
        seen = {p.name for p in papermill_translators.find_translator("python", "python").inspect(params[0])}
        for node in body:
            for target in getattr(node, "targets", []):
                if isinstance(target, ast.Name) and target.id not in seen:
                    out.append(f"{name}: papermill cannot parse the parameter line of {target.id!r} "
                               f"(quotes in its comment?)")
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        if c.get("outputs") and not is_checked(c):
            out.append(f"{name}: cell {i} has outputs but is not tagged {CHECK_TAG}")
        if "NBVAL_CHECK_OUTPUT" in c.source:
            out.append(f"{name}: cell {i} has a # NBVAL_CHECK_OUTPUT comment; use the {CHECK_TAG} cell tag")
        if c.get("execution_count") is not None and not is_checked(c):
            out.append(f"{name}: cell {i} has an execution count")
    return out


def _is_literal(node) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except ValueError:
        return False


def strip(nb, executed=None):
    """Clear outputs of unchecked cells; take checked cells' outputs from `executed` (same cells) if given."""
    for _i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        if is_checked(c) and executed is not None:
            src = executed.cells[_match(executed, c.source)]
            c.outputs = [o for o in src.outputs if o.get("output_type") != "display_data"]
            c.execution_count = src.execution_count  # nbval treats a cell without one as never run
        elif not is_checked(c):
            c.outputs, c.execution_count = [], None
        c.metadata.pop("execution", None)
        c.metadata.pop("papermill", None)
    return nb


def _match(executed, source: str) -> int:
    for i, c in enumerate(executed.cells):
        if c.cell_type == "code" and c.source == source:
            return i
    raise KeyError("checked cell not found in the executed notebook")


def main(argv: list[str] | None = None) -> int:
    """Command line of this module (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        bad = [p for name in NOTEBOOKS for p in problems(nbformat.read(NOTEBOOK_DIR / name, 4), name)]
        print("\n".join(bad) or "notebooks are clean")
        return 1 if bad else 0
    if argv[:1] == ["refresh"] and len(argv) == 2:
        for name in NOTEBOOKS:
            nb = nbformat.read(NOTEBOOK_DIR / name, 4)
            executed = nbformat.read(Path(argv[1]) / "notebooks" / name, 4)
            write_text(NOTEBOOK_DIR / name, nbformat.writes(strip(nb, executed)) + "\n")
            print("refreshed", name)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
