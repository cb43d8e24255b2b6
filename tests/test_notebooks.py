"""The notebooks in notebooks/ run top to bottom, in a fresh kernel of this interpreter.

Each notebook is read from disk, executed in memory with nbclient (the committed file is never
rewritten; the working directory is a temporary one) and must finish without an error. Two
cells are added around it for the checks:

- first: every figure the notebook renders is inspected as it is drawn (title, x and y labels
  on every axes that holds data; a label or title may come from an axes it shares with);
- last: the kernel reports its interpreter, the problems found in the figures and its CPU time.

Budgets: ``CPU_BUDGET_S`` of kernel CPU time (user + system, all threads) per notebook, which
does not depend on how busy the machine is, and ``WALL_TIMEOUT_S`` per cell against hangs.

The prose is checked by the notebooks themselves: every claim a markdown cell makes about the
numbers is an ``assert`` in a code cell (so a claim that stops being true fails the run), and
this file checks that every section whose code prints or plots results holds assertions.
"""

from __future__ import annotations

import ast
import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = (
    "01_vanishing_and_exploding",
    "02_lstm_gradient_highway",
    "03_chaos_and_lyapunov",
    "04_long_range_tasks",
    "05_kernels_and_speed",
    "06_representations_and_architectures",
    "07_fixed_points",
)
CPU_BUDGET_S = 180.0  # kernel CPU seconds per notebook (3 minutes of one core)
WALL_TIMEOUT_S = 600  # per cell
MAX_BYTES = 1_000_000
KERNEL = "rnnjax-notebook-test"

FIGURE_CHECK = r'''
import matplotlib.backend_bases as _backend_bases

_FIGURE_PROBLEMS, _FIGURES_SEEN = [], [0]
_print_figure = _backend_bases.FigureCanvasBase.print_figure


def _shared(ax, getter):
    """The value of ``getter`` on ax or on an axes it shares x (xlabel) or y (ylabel) with."""
    groups = {"xlabel": ax.get_shared_x_axes(), "ylabel": ax.get_shared_y_axes()}
    siblings = groups[getter].get_siblings(ax) if getter in groups else [ax]
    return any(getattr(a, "get_" + getter)() for a in siblings)


def _check_figure(self, *args, **kwargs):
    fig = self.figure
    _FIGURES_SEEN[0] += 1
    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
    for ax in fig.axes:
        has_data = ax.lines or ax.collections or ax.images or ax.patches
        if not (ax.axison and ax.get_visible() and has_data) or ax.get_label() == "<colorbar>":
            continue
        twins = ax.get_shared_x_axes().get_siblings(ax) + ax.get_shared_y_axes().get_siblings(ax)
        titled = suptitle or any(a.get_title() for a in twins)
        for what, ok in (("title", titled), ("x label", _shared(ax, "xlabel")),
                         ("y label", _shared(ax, "ylabel"))):
            if not ok:
                _FIGURE_PROBLEMS.append(f"figure {_FIGURES_SEEN[0]}: an axes has no {what}")
    return _print_figure(self, *args, **kwargs)


_backend_bases.FigureCanvasBase.print_figure = _check_figure
'''

REPORT = r"""
import json as _json, resource as _resource, sys as _sys
_usage = _resource.getrusage(_resource.RUSAGE_SELF)
print(_json.dumps({"executable": _sys.executable, "figures": _FIGURES_SEEN[0],
                   "problems": _FIGURE_PROBLEMS, "cpu_s": _usage.ru_utime + _usage.ru_stime}))
"""


def _path(name: str) -> Path:
    return NOTEBOOKS / f"{name}.ipynb"


def _asserts(source: str) -> int:
    """The number of ``assert`` statements in a code cell (0 if it does not parse as Python)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics: not parsed, counted as none
        return 0
    return sum(isinstance(node, ast.Assert) for node in ast.walk(tree))


def sections_without_assertions(nb) -> list[str]:
    """Headings of the sections (markdown ``#`` lines) whose code shows results, asserting nothing.

    A section "shows results" when one of its code cells prints or draws (``print(``,
    ``display(``, ``plt.show()``); the cells of the imports and settings do neither.
    """
    sections: list[tuple[str, int, bool]] = []
    heading, asserts, shows = "(top)", 0, False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            titles = [line for line in cell.source.splitlines() if line.startswith("#")]
            if titles:
                sections.append((heading, asserts, shows))
                heading, asserts, shows = titles[0].lstrip("# ").strip(), 0, False
        elif cell.cell_type == "code":
            asserts += _asserts(cell.source)
            shows = shows or any(k in cell.source for k in ("print(", "display(", "plt.show()"))
    sections.append((heading, asserts, shows))
    return [h for h, n, show in sections if show and n == 0 and h != "Takeaway"]


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernelspec that starts this very interpreter, found before any other on the path."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "rnnjax (test)", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("JAX_DISABLE_MOST_OPTIMIZATIONS", raising=False)  # as a user runs it
    return tmp_path


def test_the_five_notebooks_are_committed_small_and_executed():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)
    for name in EXPECTED:
        path = _path(name)
        size = path.stat().st_size
        assert size < MAX_BYTES, f"{path.name} is {size} bytes (limit {MAX_BYTES})"
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, f"{path.name} has no code"
        unexecuted = [i for i, c in enumerate(code) if not c.execution_count]
        assert not unexecuted, f"{path.name}: code cells {unexecuted} were not executed"
        figures = [o for c in code for o in c.outputs if o.get("output_type") == "display_data"]
        assert figures, f"{path.name} has no stored figure"
        errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
        assert not errors, f"{path.name} was committed with an error output"
        assert nb.cells[0].cell_type == "markdown" and nb.cells[-1].cell_type == "markdown"
        assert "Takeaway" in nb.cells[-1].source, f"{path.name} does not end with a takeaway"
        missing = sections_without_assertions(nb)
        assert not missing, f"{path.name}: sections that show results but assert nothing: {missing}"


def test_assertion_check_finds_a_section_that_asserts_nothing():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import numpy as np\nSEED = 0"),
        nbformat.v4.new_markdown_cell("## Checked\nx is small."),
        nbformat.v4.new_code_cell("x = 0.25\nprint(x)\nassert x < 1, 'x is small'"),
        nbformat.v4.new_markdown_cell("## Unchecked\ny is large."),
        nbformat.v4.new_code_cell("y = 3\nprint(y)"),
        nbformat.v4.new_markdown_cell("## Takeaway\n- x is small."),
    ]
    assert sections_without_assertions(nb) == ["Unchecked"]


def execute(nb, directory: Path) -> tuple[dict, float]:
    """Runs ``nb`` (in place, in memory) between the two check cells; returns the report, wall s."""
    nb.cells.insert(0, nbformat.v4.new_code_cell(FIGURE_CHECK))
    nb.cells.append(nbformat.v4.new_code_cell(REPORT))
    client = NotebookClient(
        nb,
        timeout=WALL_TIMEOUT_S,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(directory)}},  # the working directory
        # a cell's printed output can reach the client after its reply on a loaded machine:
        # wait for it (nbclient's default 4 s then drops it silently), and fail if it never comes
        iopub_timeout=120,
        raise_on_iopub_timeout=True,
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    wall = time.perf_counter() - start
    report = json.loads(nb.cells[-1].outputs[-1]["text"].strip().splitlines()[-1])
    del nb.cells[0], nb.cells[-1]
    return report, wall


def test_figure_check_catches_an_unlabelled_axes(kernel_env):
    nb = nbformat.v4.new_notebook()
    source = """
import matplotlib.pyplot as plt
fig, (left, right) = plt.subplots(1, 2, sharey=True)
left.plot([0, 1]); left.set(title="labelled", xlabel="t (steps)", ylabel="norm")
right.plot([1, 0]); right.set(title="no x label")
plt.show()
"""
    nb.cells = [nbformat.v4.new_code_cell(source)]
    report, _ = execute(nb, kernel_env)
    assert report["executable"] == sys.executable
    # the right panel borrows its y label from the shared axis but has no x label of its own
    assert report["figures"] == 1 and report["problems"] == ["figure 1: an axes has no x label"]


@pytest.mark.slow  # a fresh kernel per notebook, 20-55 s each: `make test-slow`
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_top_to_bottom(name, kernel_env):
    nb = nbformat.read(_path(name), as_version=4)
    report, wall = execute(nb, kernel_env)
    cpu, figures = report["cpu_s"], report["figures"]
    print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s kernel CPU, {figures} figures")
    assert report["executable"] == sys.executable
    assert figures > 0
    assert not report["problems"], report["problems"]
    assert cpu < CPU_BUDGET_S, f"{name} took {cpu:.0f} s of kernel CPU (budget {CPU_BUDGET_S})"
