"""Named width configurations wherever a width is taken (issue 27, item 4): ``eval``,
``calibrate``, ``profile``, ``pick`` and ``export`` take a configuration's name with ``--width``
/``--widths`` or ``--config`` alike; tables stay aligned with long names; the profile plot uses
the accuracy the table shows."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

import slimify
from slimify.rewrite.config_names import store_config
from tests.test_cli import run  # main(args) → (exit code, stdout, stderr)
from tests.test_configs import digitsnet

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "lean-for-the-phone-0.60"  # longer than any column a width needs


@pytest.fixture(scope="module")
def slim(tmp_path_factory) -> Path:
    model = digitsnet()
    store_config(model, NAME, 0.6)
    path = tmp_path_factory.mktemp("named") / "m.slim"
    slimify.save(model, path)
    return path


def _columns(line: str) -> list[int]:
    return [i for i, c in enumerate(line) if c == "|"]


def _table(out: str, first: str) -> list[str]:
    """The table lines of ``out`` from the line starting with ``first`` to the next empty one."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(first))
    return lines[start:lines.index("", start) if "" in lines[start:] else len(lines)]


def test_eval_takes_names_in_widths_and_config(slim: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run(["eval", slim, "--data", "digits", "--widths", f"0.5,{NAME}", "--json", tmp_path / "e.json"],
                         capsys)
    assert code == 0, err
    rows = _table(out, "width")
    assert [r.split()[0] for r in rows] == ["width", NAME, "0.50"]  # widest first: 0.6 before 0.5
    assert len({len(r) for r in rows}) == 1  # aligned
    assert [row["width"] for row in json.loads((tmp_path / "e.json").read_text())] == [NAME, 0.5]
    code, out, err = run(["eval", slim, "--data", "digits", "--config", NAME], capsys)
    assert code == 0 and [r.split()[0] for r in _table(out, "width")] == ["width", NAME], err
    code, out, err = run(["eval", slim, "--data", "digits"], capsys)  # default: every switch and named configuration
    assert code == 0 and NAME in out and "0.25" in out, err
    code, _, err = run(["eval", slim, "--data", "digits", "--widths", "nope"], capsys)
    assert code == 2 and "no width configuration named 'nope'" in err and NAME in err


def test_profile_pick_export_calibrate_take_a_name(slim: Path, tmp_path: Path, capsys) -> None:
    fast = ["--runs", "1", "--warmup", "0"]
    code, out, err = run(["profile", slim, *fast, "--widths", f"0.5,{NAME}"], capsys)
    assert code == 0, err
    assert [r.split()[0] for r in _table(out, "width")] == ["width", "0.5", NAME]
    code, out, err = run(["profile", slim, *fast, "--config", NAME], capsys)
    assert code == 0 and [r.split()[0] for r in _table(out, "width")] == ["width", NAME], err
    code, out, err = run(["pick", slim, "--params", "100M", "--config", NAME, "--widths", "0.25"], capsys)
    assert code == 0 and f"picked {NAME}:" in out, err
    for option in ("--width", "--config"):
        code, out, err = run(["export", slim, option, NAME, "-o", tmp_path / f"m{option}.onnx"], capsys)
        assert code == 0 and f"configuration '{NAME}'" in out, err
    code, _, err = run(["export", slim, "--width", NAME, "--config", NAME, "-o", tmp_path / "x.onnx"], capsys)
    assert code == 2 and "give either" in err
    code, out, err = run(["calibrate", slim, "--data", "digits", "--width", NAME, "--batches", "1",
                          "-o", tmp_path / "c.slim"], capsys)
    assert code == 0 and f"for '{NAME}'" in out, err


def test_profile_table_and_plot_use_the_accuracy_there_is(slim: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import matplotlib.pyplot as plt

    (tmp_path / "acc.json").write_text(json.dumps({"0.25": 50, "0.5": 60, "0.75": 70, "1.0": 80}))
    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    code, out, err = run(["profile", slim, "--runs", "1", "--warmup", "0", "--accuracy", tmp_path / "acc.json",
                          "--plot", tmp_path / "p.png"], capsys)
    assert code == 0, err
    rows = _table(out, "width")
    assert len({tuple(_columns(r)) for r in rows}) == 1  # every '|' under the header's
    named = next(r for r in rows if r.split()[0] == NAME)
    assert named.rstrip().endswith("?") and f"not evaluated for {NAME}" in out
    ax = kept[0].axes[0]
    assert "accuracy vs latency" in ax.get_title() and ax.get_ylabel() == "accuracy, %"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = [t.get_text() for t in ax.texts]
    assert labels == ["w=0.25", "w=0.5", "w=0.75", "w=1"]  # the rows with an accuracy
