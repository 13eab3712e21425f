"""The README's examples run as written: its Python snippets and every ``lipsdp`` command line.

They are read from README.md each time, so the README and this test cannot drift apart.
Each runs in a temporary directory holding small model files under the names the README
uses (``model.pt`` …), created here by extension and name; ``lipsdp`` commands run
in-process through :func:`lipsdp.cli.main`, with their arguments exactly as written.

``lipsdp compare`` runs the real default suite (three digits MLPs; a few seconds), trained
once for all the README's ``compare`` lines.  What is not run, and why: ``bash
scripts/setup.sh``, ``pip install …``, ``. .venv/bin/activate`` and ``bash scripts/test.sh``
set up the environment (network access) or run this test suite.
"""

from __future__ import annotations

import json
import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io

import lipsdp
from lipsdp.cli import main
from lipsdp.io import load_network, save_network_npz

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_MODEL_FILE = re.compile(r"\.(pt|pth|npz|mat)$")


def _blocks(language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(README.read_text(encoding="utf-8")) if lang == language]


def _section(title: str) -> str:
    """The README text under the heading ``title`` up to the next heading of any level."""
    text = README.read_text(encoding="utf-8")
    start = text.index(title)
    following = re.search(r"^#{1,6} ", text[start + len(title):], re.M)
    return text[start: start + len(title) + (following.start() if following else len(text))]


def readme_commands() -> list[list[str]]:
    """Every ``lipsdp`` invocation in the README's bash blocks, as argv lists (comments dropped)."""
    commands = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            for part in re.split(r"&&|;", line.split(" #")[0]):
                words = shlex.split(part, comments=True)
                if words and Path(words[0]).name == "lipsdp" and words[1:] not in commands:
                    commands.append(words[1:])
    return commands


# ----------------------------------------------------------------------------- model files
def _feedforward(dims=(3, 6, 5, 2), seed=0) -> lipsdp.Network:
    rng = np.random.default_rng(seed)
    return lipsdp.Network.from_weights([rng.normal(size=(dims[k + 1], dims[k])) for k in range(len(dims) - 1)],
                                       [rng.normal(size=dims[k + 1]) for k in range(len(dims) - 1)], "relu")


def _torch_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 5), torch.nn.ReLU(),
                               torch.nn.Linear(5, 2))


def _torch_cnn():
    """A small CNN on 1x28x28 inputs (the README's ``cnn.pt``)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 2, 4, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 7 * 7, 3))


def _write_mat(path: Path, key: str) -> None:
    rng = np.random.default_rng(1)
    cells = np.empty((1, 4), dtype=object)
    for k, shape in enumerate([(4, 3), (4, 4), (4, 4), (2, 4)]):  # square middle: also a residual layout
        cells[0, k] = rng.normal(size=shape)
    scipy.io.savemat(path, {key: cells})


def make_model_file(path: Path) -> None:
    """A small model at ``path``, of the kind its name and extension say (see the README's formats)."""
    if path.suffix in (".pt", ".pth"):
        torch = pytest.importorskip("torch")
        model = _torch_cnn() if "cnn" in path.name else _torch_model()
        if "state_dict" in path.name:
            torch.save(model.state_dict(), path)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.jit.script(model).save(str(path))
    elif path.suffix == ".npz":
        save_network_npz(_feedforward(), path)
    else:
        _write_mat(path, "W" if "maxmin" in path.name.lower() else "weights")


# ----------------------------------------------------------------------------- checks
def _train_once(monkeypatch) -> None:
    """The suite's networks, trained by the first ``compare`` and reused by the next ones."""
    from functools import lru_cache

    from lipsdp import suite

    monkeypatch.setattr(suite, "default_networks", lru_cache(maxsize=None)(suite.default_networks))


def _option(argv: list[str], name: str, default: str | None = None) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else default


def _file_network(argv: list[str]) -> lipsdp.Network:
    path = next(a for a in argv if _MODEL_FILE.search(a))
    shape = _option(argv, "--input-shape")
    return load_network(path, activation=_option(argv, "--activation"), structure=_option(argv, "--structure"),
                        input_shape=None if shape is None else tuple(int(v) for v in shape.split(",")))


def _estimated(out: str, argv: list[str]) -> tuple[str, float]:
    """(relation, value) of an ``estimate`` output: ``<=``, ``>=`` or ``=``."""
    if "--json" in argv:
        record = json.loads(out)
        relation = {"certified upper bound": "<=", "lower bound": ">=", "exact constant": "="}[record["kind"]]
        return relation, record["value"]
    match = re.match(r"\S+: L (<=|>=|=) (\S+) in the (L2|Linf) norm", out)
    assert match, out
    return match.group(1), float(match.group(2))


def check_estimate(out: str, argv: list[str]) -> None:
    """The number lies on the right side of the known bounds of the file's network."""
    net, norm = _file_network(argv), _option(argv, "--norm", "2")
    relation, value = _estimated(out, argv)
    lower = lipsdp.compare(net, methods="lower", norm=norm)["value"].item()
    upper = lipsdp.estimate(net, norm=norm).value
    if relation in ("<=", "="):
        assert value >= lower * (1 - 1e-9), (argv, value, lower)
    if relation in (">=", "="):
        assert value <= upper * (1 + 1e-9), (argv, value, upper)


def check_compare(out: str, argv: list[str], cwd: Path) -> None:
    folder = cwd / _option(argv, "--out", "results")
    for name in ("compare_default.csv", "compare_default.png"):
        assert f"wrote {Path(_option(argv, '--out', 'results')) / name}" in out
        assert (folder / name).stat().st_size > 0
    import pandas as pd

    methods = list(lipsdp.api.DEFAULT_COMPARE)
    if "--methods" in argv:
        rest = argv[argv.index("--methods") + 1:]
        methods = rest[: next((i for i, word in enumerate(rest) if word.startswith("--")), len(rest))]
    table = pd.read_csv(folder / "compare_default.csv")
    assert set(table["method"]) == set(methods)
    for _, group in table.groupby("network"):  # every upper bound above the lower bound: gap >= 1
        assert (group.loc[group["method"] != "lower", "gap"] >= 1 - 1e-9).all()


def run_command(argv: list[str], capsys) -> str:
    try:
        status = main(argv)
    except SystemExit as exc:  # --version and --help exit through argparse
        status = exc.code
    captured = capsys.readouterr()
    assert status == 0, (argv, captured.err)
    return captured.out


# ----------------------------------------------------------------------------- tests
def test_the_readme_has_the_examples_this_test_runs():
    commands = readme_commands()
    assert ["compare"] in commands  # the quick start
    assert sum(argv[0] == "estimate" for argv in commands) >= 3 and ["methods"] in commands
    assert _blocks("python")


def _run_readme_commands(commands: list[list[str]], cwd: Path, capsys) -> None:
    for argv in commands:
        for name in filter(_MODEL_FILE.search, argv):
            if not Path(name).exists():
                make_model_file(Path(name))
        out = run_command(argv, capsys)
        assert out.strip(), argv
        if argv[0] == "estimate":
            check_estimate(out, argv)
        elif argv[0] == "compare":
            check_compare(out, argv, cwd)
        elif argv[0] == "methods":
            assert all(name in out for name in lipsdp.methods() + ["lower", "exact"])
        elif argv[0] == "solvers":
            assert all(name in out for name in lipsdp.solvers(available_only=False))
        elif argv == ["--version"]:
            assert out.strip() == f"lipsdp {lipsdp.__version__}"


def test_every_lipsdp_command_line_of_the_readme_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run_readme_commands([argv for argv in readme_commands() if argv[0] != "compare"], tmp_path, capsys)


def test_the_readme_compare_commands_run_the_default_suite(tmp_path, capsys, monkeypatch):
    """The quick start's main job, verbatim: it writes results/ (here under tmp_path) and says so."""
    monkeypatch.chdir(tmp_path)
    _train_once(monkeypatch)
    _run_readme_commands([argv for argv in readme_commands() if argv[0] == "compare"], tmp_path, capsys)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["compare_default.csv", "compare_default.png"]


def test_the_python_snippets_of_the_readme_run(tmp_path, monkeypatch):
    """Each ``python`` block runs with ``model`` bound to a small torch model (the README's placeholder)."""
    monkeypatch.chdir(tmp_path)
    for snippet in _blocks("python"):
        namespace = {"model": _torch_model()}
        exec(compile(snippet, "README.md", "exec"), namespace)


def test_the_readme_states_the_defaults_the_code_has():
    from lipsdp.api import DEFAULT_COMPARE
    from lipsdp.lower import DEFAULT_MAX_REGIONS

    quick_start = _section("## Quick start")
    assert all(f"`{name}`" in quick_start for name in DEFAULT_COMPARE)
    assert f"more than {DEFAULT_MAX_REGIONS} possible linear regions" in " ".join(_section("### Command line").split())
