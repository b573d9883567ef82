"""The committed notebooks: clean (outputs only in nbval-checked cells), parameterised, importing lab6."""
import ast

import nbformat
import pytest

from lab6.nbtools import problems, strip
from lab6.run import NOTEBOOK_DIR, NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean(name):
    path = NOTEBOOK_DIR / name
    assert path.exists(), f"{path} is missing"
    nb = nbformat.read(path, as_version=4)
    assert problems(nb, name) == []


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_defines_no_functions(name):
    """Thin notebooks: every function lives in lab6 and is imported."""
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code" and not c.source.startswith("%"))
    src = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!")))
    defs = [n.name for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert defs == [], f"{name} defines {defs}; move them into the lab6 package"


def test_problems_detects_stray_outputs():
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("x = 1")
    p.metadata["tags"] = ["parameters"]
    c = nbformat.v4.new_code_cell("print(1)")
    c.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    nb.cells = [p, c]
    assert problems(nb, "nb") == ["nb: cell 1 has outputs but is not tagged nbval-check-output"]
    assert problems(strip(nb), "nb") == []
    c.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    c.metadata["tags"] = ["nbval-check-output"]
    assert problems(nb, "nb") == [] and strip(nb).cells[1].outputs  # a tagged cell keeps its output
    c.source = "# NBVAL_CHECK_OUTPUT\nprint(1)"
    assert "use the nbval-check-output cell tag" in problems(nb, "nb")[0]
    p.source = "x = f(1)"
    assert "may hold only `name = literal` lines" in problems(nb, "nb")[0]
