"""The notebooks as a user meets them.

Each notebook is executed the documented way (``jupytext --to notebook --execute``,
see docs/notebooks.md) with ``LIPSDP_RESULTS`` pointing to a temporary directory,
and the executed copy is checked: no error, no noise (warnings, object reprs,
figures that did not render), no NaN where a number exists, its figures under
``LIPSDP_RESULTS`` and nothing written into the repository.  The committed
``.ipynb`` files carry no outputs and match their jupytext ``.py`` sources.

A NaN is legitimate only in a cell tagged ``nan-explained`` (jupytext:
``# %% tags=["nan-explained"]``) whose preceding markdown cell says why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: The figures each notebook writes (committed under results/).
FIGURES = {
    "01_estimate_bounds": {"01_estimate_bounds.png"},
    "02_beyond_slope_restricted": {"02_beyond_slope_restricted.png"},
    "03_train_lipschitz_models": {"lmi_certified_accuracy.png"},
    "04_cnn_bounds": {"04_cnn_bounds.png"},
    "05_certified_image_classifiers": {"05_certified_image_classifiers.png"},
}
NAN_TAG = "nan-explained"
NAN = re.compile(r"\bnan\b|<NA>", re.IGNORECASE)
OBJECT_REPR = re.compile(r"<[\w.]+ (object )?at 0x[0-9a-fA-F]+>")
FIGURE_REPR = re.compile(r"<Figure size [^>]*>")


# ------------------------------------------------------------------ output scanners
def _texts(output) -> list[str]:
    """Text a reader sees in one output: a stream, or the text/plain and text/html of a result."""
    if output.get("output_type") == "stream":
        return [output.get("text", "")]
    data = output.get("data", {})
    return [data[key] for key in ("text/plain", "text/html") if key in data]


def _code_cells(notebook):
    """``(index, cell, preceding markdown source)`` of every code cell."""
    markdown = ""
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type == "markdown":
            markdown = cell.source
        elif cell.cell_type == "code":
            yield i, cell, markdown


def nan_outputs(notebook) -> list[str]:
    """Cells showing a NaN that is not allowed: untagged, or tagged without an explanation above."""
    found = []
    for i, cell, markdown in _code_cells(notebook):
        if not any(NAN.search(text) for out in cell.get("outputs", []) for text in _texts(out)):
            continue
        tagged = NAN_TAG in cell.get("metadata", {}).get("tags", [])
        if not tagged:
            found.append(f"cell {i} shows NaN: compute the number, or tag the cell {NAN_TAG!r} and say why")
        elif "NaN" not in markdown:
            found.append(f"cell {i} is tagged {NAN_TAG!r} but the markdown cell above it does not explain the NaN")
    return found


def noise_outputs(notebook) -> list[str]:
    """Outputs that are not results: stderr (warnings), object reprs, figures that did not render."""
    found = []
    for i, cell, _ in _code_cells(notebook):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                found.append(f"cell {i} writes to stderr: {out['text'].strip()[:200]}")
            elif out.get("output_type") in ("execute_result", "display_data"):
                text = out.get("data", {}).get("text/plain", "")
                if OBJECT_REPR.search(text):
                    found.append(f"cell {i} shows an object repr: {text[:200]} (end the cell with ';')")
                elif FIGURE_REPR.search(text) and "image/png" not in out.get("data", {}):
                    found.append(f"cell {i} shows {text[:80]} without the image")
    return found


def _notebook(cells) -> nbformat.NotebookNode:
    """A notebook of ``(kind, source, outputs, tags)`` cells, for the scanner tests."""
    v4 = nbformat.v4
    made = []
    for kind, source, outputs, tags in cells:
        cell = v4.new_markdown_cell(source) if kind == "markdown" else v4.new_code_cell(source, outputs=outputs)
        cell.metadata["tags"] = list(tags)
        made.append(cell)
    return v4.new_notebook(cells=made)


def _result(text: str, **extra) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("execute_result", data={"text/plain": text, **extra}, execution_count=1)


NAN_TABLE = "  parameterization  lipsdp_neuron\n0              sll            NaN"


def test_nan_scan_flags_a_table_with_nan():
    notebook = _notebook([("markdown", "A table.", [], []), ("code", "cert", [_result(NAN_TABLE)], [])])
    assert len(nan_outputs(notebook)) == 1
    html = _result("table", **{"text/html": "<td>nan</td>"})
    assert len(nan_outputs(_notebook([("code", "cert", [html], [])]))) == 1
    numbers = _result("  parameterization  lipsdp_neuron\n0              sll         2.8836")
    assert nan_outputs(_notebook([("code", "cert", [numbers], [])])) == []


def test_nan_scan_allows_a_tagged_and_explained_cell_only():
    explained = _notebook([("markdown", "LipSDP-RR did not run on 8fc: NaN there.", [], []),
                           ("code", "table", [_result(NAN_TABLE)], [NAN_TAG])])
    assert nan_outputs(explained) == []
    unexplained = _notebook([("markdown", "A table.", [], []), ("code", "table", [_result(NAN_TABLE)], [NAN_TAG])])
    assert len(nan_outputs(unexplained)) == 1


def test_noise_scan_flags_warnings_reprs_and_unrendered_figures():
    warning = nbformat.v4.new_output("stream", name="stderr", text="TqdmWarning: IProgress not found.")
    legend = _result("<matplotlib.legend.Legend at 0x7f862722d950>")
    figure = nbformat.v4.new_output("display_data", data={"text/plain": "<Figure size 800x400 with 1 Axes>"})
    notebook = _notebook([("code", "x", [warning], []), ("code", "y", [legend], []), ("code", "z", [figure], [])])
    assert len(noise_outputs(notebook)) == 3


def test_noise_scan_accepts_results_and_rendered_figures():
    shown = nbformat.v4.new_output("display_data", data={"text/plain": "<Figure size 800x400 with 1 Axes>",
                                                         "image/png": "iVBORw0KGgo="})
    printed = nbformat.v4.new_output("stream", name="stdout", text="saved results/01_estimate_bounds.png\n")
    notebook = _notebook([("code", "x", [shown, printed, _result("13.9663")], [])])
    assert noise_outputs(notebook) == []


# ------------------------------------------------------------------ committed notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_in_sync_with_py(path: Path):
    source = path.with_suffix(".py")
    assert source.exists(), f"{path.name} has no jupytext source {source.name}"
    committed, text = nbformat.read(path, as_version=4), jupytext.read(source)

    def code(notebook):
        return [cell.source.strip() for cell in notebook.cells if cell.cell_type == "code"]

    assert code(committed) == code(text), (f"{path.name} is out of sync with {source.name}: "
                                           f"run `jupytext --to ipynb {source}`")
    with_outputs = [i for i, cell in enumerate(committed.cells) if cell.get("outputs")]
    assert not with_outputs, (f"{path.name} is committed with outputs in cells {with_outputs}: "
                              f"run `jupytext --to ipynb {source}` to write it without them")


def test_every_notebook_figure_is_committed():
    assert set(FIGURES) == {path.stem for path in NOTEBOOKS}, "FIGURES must list the figures of every notebook"
    missing = [name for names in FIGURES.values() for name in names if not (ROOT / "results" / name).exists()]
    assert not missing, f"results/ lacks {missing}: execute the notebooks once (docs/notebooks.md)"


# ------------------------------------------------------------------ executed notebooks
def _repository_figures() -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in (ROOT / "results").glob("*.png")}


class Execution(NamedTuple):
    stem: str
    notebook: nbformat.NotebookNode
    results: Path  # LIPSDP_RESULTS of the run
    before: dict[str, int]  # modification times of the repository's figures before the run
    after: dict[str, int]


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=lambda p: p.stem)
def executed(request, tmp_path_factory):
    """One notebook executed once (an :class:`Execution`), shared by the checks below.

    Runs ``jupytext --to notebook --execute`` on the ``.py`` source, as docs/notebooks.md says, with the
    executed copy and ``LIPSDP_RESULTS`` in a temporary directory and the kernel's default (inline)
    figures: ``MPLBACKEND`` is removed from its environment.
    """
    try:
        import nbconvert  # noqa: F401  (jupytext --execute runs the notebook through it)
    except ImportError:
        pytest.fail("jupytext --execute needs nbconvert, which the test extra installs: pip install -e '.[test]'")
    source = request.param.with_suffix(".py")
    work = tmp_path_factory.mktemp(source.stem)
    output, results = work / request.param.name, work / "results"
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    env["LIPSDP_RESULTS"] = str(results)
    before = _repository_figures()
    # --run-path: the kernel runs in notebooks/ (as without --output), where bound_figures.py is
    command = [sys.executable, "-m", "jupytext", "--to", "notebook", "--execute", str(source),
               "--output", str(output), "--run-path", str(source.parent)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{source.name} failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    return Execution(source.stem, nbformat.read(output, as_version=4), results, before, _repository_figures())


@pytest.mark.slow
def test_notebook_runs_clean(executed):
    notebook = executed.notebook
    errors = [out for cell in notebook.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
    assert noise_outputs(notebook) == []
    assert nan_outputs(notebook) == []


@pytest.mark.slow
def test_notebook_figures_go_to_lipsdp_results(executed):
    written = {path.name for path in executed.results.glob("*.png")}
    expected = FIGURES[executed.stem]
    assert written == expected, f"figures under LIPSDP_RESULTS: {sorted(written)}, expected {sorted(expected)}"
    touched = sorted(name for name in expected if executed.before.get(name) != executed.after.get(name))
    assert not touched, f"the notebook wrote {touched} into the repository's results/"
