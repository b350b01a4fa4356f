"""Every code block of README.md and docs/*.md is checked (issue 26, item 5), so a doc example
cannot go stale:

- a Python block runs in a temporary folder (after the code of a ``<!-- setup: … -->`` comment
  just above it, if any); a block of signatures (``name(args) -> type``) is compared, parameter by
  parameter, with the function it names, and its other lines run (``a == b`` lines are asserted);
- a shell block's ``slimify`` commands are parsed by the real CLI and those that take seconds run
  on tiny stand-ins of their input files (``tests/test_help_examples.py``'s helpers); a ``$``
  line followed by ``error:`` must fail;
- a block with ``<!-- not run: REASON -->`` just above it is skipped with that reason (pytest lists
  each skip), after its imports and ``slimify.NAME`` uses are checked and its commands parsed.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import slimify
from tests.test_help_examples import HEAVY, check_command, folder  # noqa: F401  (folder: a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->")
SETUP = re.compile(r"<!-- setup: (.+?) -->", re.S)
SIGNATURE = re.compile(r"^(\w+)\((.*)\)\s*->\s*[^#]+?\s*(#.*)?$", re.S)
SHELL = ("bash", "sh", "console")
MAX_NOT_RUN = 12  # blocks skipped today (listed by pytest -rs); a new one must raise this on purpose
DOC_HEAVY = (*HEAVY, "DIR", "fashion-mnist")  # a data folder to fill in, a data set to install


@dataclass
class Block:
    """One fenced block: where it is, its language, its code and the comment just above it."""

    where: str
    lang: str
    code: str
    not_run: str | None
    setup: str


def _blocks() -> list[Block]:
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            before = text[:m.start()].rstrip().rsplit("\n", 1)[-1]
            if m.group(1) == "python" or m.group(1) in SHELL:
                skip, setup = NOT_RUN.search(before), SETUP.search(before)
                out.append(Block(f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}", m.group(1),
                                 m.group(2), skip.group(1) if skip else None, setup.group(1) if setup else ""))
    return out


BLOCKS = _blocks()
PYTHON = [b for b in BLOCKS if b.lang == "python"]
COMMANDS = [b for b in BLOCKS if b.lang in SHELL]


def _statements(code: str) -> list[str]:
    """Lines joined while a bracket is open: one statement or signature each (comments dropped)."""
    out, current, depth = [], "", 0
    for line in code.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line + "\n"
        depth += line.count("(") + line.count("[") - line.count(")") - line.count("]")
        if depth <= 0:
            out.append(current.strip())
            current, depth = "", 0
    return out


def _static_check(code: str) -> None:
    """Every import resolves and every ``slimify.NAME`` exists (for blocks that are not run)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"{node.module} has no {alias.name}"
        elif isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "slimify":
            assert hasattr(slimify, node.attr), f"slimify has no {node.attr}"


def _parameters(args: ast.arguments) -> list[tuple[str, str, Any]]:
    """(name, kind, default) of a parsed parameter list, as :func:`_real_parameters` gives them."""
    out: list[tuple[str, str, Any]] = []
    positional = [*args.posonlyargs, *args.args]
    defaults = [inspect.Parameter.empty] * (len(positional) - len(args.defaults)) + list(args.defaults)
    out += [(a.arg, "positional", d) for a, d in zip(positional, defaults)]
    if args.vararg:
        out.append((args.vararg.arg, "*", inspect.Parameter.empty))
    out += [(a.arg, "keyword", inspect.Parameter.empty if d is None else d)
            for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        out.append((args.kwarg.arg, "**", inspect.Parameter.empty))
    return [(n, k, d if d is inspect.Parameter.empty else ast.literal_eval(d)) for n, k, d in out]


def _real_parameters(fn: Any) -> list[tuple[str, str, Any]]:
    kinds = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.KEYWORD_ONLY: "keyword",
             inspect.Parameter.VAR_KEYWORD: "**"}
    return [(p.name, kinds.get(p.kind, "positional"), p.default) for p in inspect.signature(fn).parameters.values()]


def _check_signature(statement: str, namespace: dict[str, Any]) -> None:
    m = SIGNATURE.match(statement)
    assert m, f"neither Python nor a signature (name(args) -> type):\n{statement}"
    name = m.group(1)
    fn = namespace.get(name, getattr(slimify, name, None))
    assert fn is not None, f"{name}: not imported in the block and no public slimify name"
    written = ast.parse(f"def {name}({m.group(2)}): pass").body[0]
    assert _parameters(written.args) == _real_parameters(fn), f"{name}{inspect.signature(fn)} is not\n{statement}"


def _asserting(tree: ast.Module) -> ast.Module:
    """A top-level comparison (``parse_amount("1.5G") == 1.5e9``) is a claim: asserted."""
    tree.body = [ast.Assert(test=s.value) if isinstance(s, ast.Expr) and isinstance(s.value, ast.Compare) else s
                 for s in tree.body]
    return ast.fix_missing_locations(tree)


def _run_python(block: Block) -> None:
    namespace: dict[str, Any] = {"__name__": "__doc_example__"}
    try:
        tree = ast.parse(block.setup + "\n" + block.code, block.where)
    except SyntaxError:  # signatures, with imports and checks between them
        for statement in _statements(block.code):
            try:
                part = ast.parse(statement)
            except SyntaxError:
                _check_signature(statement, namespace)
                continue
            exec(compile(_asserting(part), block.where, "exec"), namespace)  # noqa: S102
        return
    exec(compile(_asserting(tree), block.where, "exec"), namespace)  # noqa: S102


@pytest.mark.parametrize("block", PYTHON, ids=[b.where for b in PYTHON])
def test_python_block(block: Block, tmp_path: Path, monkeypatch) -> None:
    if block.not_run:
        _static_check(block.code)
        pytest.skip(f"{block.where}: not run: {block.not_run}")
    monkeypatch.chdir(tmp_path)
    _run_python(block)


def _commands(block: Block) -> list[tuple[str, list[str], bool]]:
    """(line, arguments after ``slimify``, must fail) of each slimify command in a shell block."""
    lines = block.code.replace("\\\n", " ").splitlines()
    out = []
    for i, line in enumerate(lines):
        if block.lang == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        words = shlex.split(line, comments=True)
        if words[:1] == ["slimify"] or words[:1] == ["torchrun"] and "slimify" in words:  # torchrun … -m slimify …
            args = words[words.index("slimify") + 1:]
        else:
            assert not words or block.not_run, f"{block.where}: {line!r} is no slimify command: mark the block not run"
            continue
        fails = i + 1 < len(lines) and lines[i + 1].startswith("error:")
        out.append((line, args, fails))
    return out


@pytest.mark.parametrize("block", COMMANDS, ids=[b.where for b in COMMANDS])
def test_shell_block(block: Block, folder: Path, capsys) -> None:  # noqa: F811
    commands = _commands(block)
    for line, args, fails in commands:
        if block.not_run or any(h in a for a in args for h in DOC_HEAVY):
            check_command(line, args, folder, capsys, heavy=True)
        else:
            check_command(line, args, folder, capsys, fails=fails)
    if block.not_run:
        pytest.skip(f"{block.where}: not run: {block.not_run} ({len(commands)} slimify command(s) parsed)")


def test_not_run_blocks_are_few_and_say_why() -> None:
    skipped = [f"{b.where}: {b.not_run}" for b in BLOCKS if b.not_run]
    assert all(len(b.not_run or "x" * 10) >= 10 for b in BLOCKS), skipped
    assert len(skipped) <= MAX_NOT_RUN, "\n".join(skipped)
    assert PYTHON and COMMANDS and len(skipped) < len(BLOCKS) / 2, "most blocks run"


def test_a_stale_block_would_fail() -> None:
    """The checks themselves: a wrong signature, a missing import and a wrong claim each fail."""
    wrong = [Block("x.md:1", "python", "pick(result, latency_ms=None) -> SwitchProfile\n", None, ""),
             Block("x.md:1", "python", "from slimify.deploy.export_batch import export_pt2\n", None, ""),
             Block("x.md:1", "python", "from slimify.selection.budget import parse_amount\n"
                                       "parse_amount('1.5G') == 1.5e6\n", None, "")]
    for block in wrong:
        with pytest.raises((AssertionError, ImportError)):
            _run_python(block)
    with pytest.raises(AssertionError):
        _static_check("import slimify\nslimify.no_such_name(1)\n")
    with pytest.raises(ImportError):
        _static_check("from slimify.deploy.export_batch import export_pt2\n")


def test_an_error_line_marks_a_command_that_must_fail() -> None:
    block = Block("x.md:1", "console", "$ slimify pick a.slim --params 1k\nerror: no switch fits\n"
                                       "$ slimify inspect a.slim\nResNet: …\n", None, "")
    assert [(args[0], fails) for _, args, fails in _commands(block)] == [("pick", True), ("inspect", False)]
    with pytest.raises(AssertionError, match="no slimify command"):
        _commands(Block("x.md:1", "bash", "pip install slimify\n", None, ""))
