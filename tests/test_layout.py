"""The package's shape (docs/design.md, *Layout*): a folder per pipeline stage, imports one way.

Every import is read from the source (also those inside functions, and ``slimify.NAME`` uses of
the lazy public API), so a cycle closed by an import inside a function fails here too.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "slimify"

# stage → rank: a module may import its own stage and the stages of lower rank, never higher ones
RANKS: dict[str, int] = {
    "errors": 0, "state": 0, "gcpause": 0, "device": 0, "registry": 0, "preprocess": 0,
    "analysis": 1, "rules": 1,  # one stage in two folders: analysis/walk runs the rules, rules read analysis/space
    "rewrite": 2,
    "check": 3,  # the self-check: runs a rewritten copy of the model, reads the trace's records
    "ordering": 4,
    "pipeline": 5,
    "store": 6,
    "deploy": 7,
    "selection": 8,  # pick, search, proven named configurations: exports and measures widths
    "train": 9,
    "cli": 10,
    "__main__": 11,  # ``python -m slimify`` (also under torchrun): runs the CLI
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _lazy_names() -> dict[str, str]:
    """``slimify.NAME`` → the module that defines it (the ``_LAZY`` table of ``slimify/__init__.py``)."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "_LAZY":
            return ast.literal_eval(node.value)
    raise AssertionError("slimify/__init__.py has no _LAZY table")


LAZY = _lazy_names()


def _public_names() -> set[str]:
    """``slimify.__all__``: its literal names and, for ``*_LAZY``, every lazy name."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
            names = {e.value for e in node.value.elts if isinstance(e, ast.Constant)}  # type: ignore[attr-defined]
            starred = any(isinstance(e, ast.Starred) for e in node.value.elts)  # type: ignore[attr-defined]
            return names | (set(LAZY) if starred else set())
    raise AssertionError("slimify/__init__.py has no __all__")


PUBLIC = _public_names()


def _type_checking_nodes(tree: ast.AST) -> set[ast.AST]:
    """Imports under ``if TYPE_CHECKING:``: read by type checkers, never run."""
    skipped: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            skipped.update(n for stmt in node.body for n in ast.walk(stmt))
    return skipped


def _target(name: str) -> str | None:
    """The slimify module an imported dotted name lives in (a module, else its parent)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> dict[str, set[str]]:
    """Imported (module, other modules): every import statement, wherever it stands."""
    tree = ast.parse(MODULES[module].read_text())
    skipped = _type_checking_nodes(tree)
    found: dict[str, set[str]] = {}
    root_imported = False
    for node in ast.walk(tree):
        if node in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
            root_imported |= any(a.name == "slimify" and a.asname is None for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] == "slimify":
                if name.rpartition(".")[2] in LAZY and _target(name) == "slimify":
                    name = f"{LAZY[name.rpartition('.')[2]]}.{name.rpartition('.')[2]}"
                target = _target(name)
                if target and target != module:
                    found.setdefault(target, set()).add(name)
            else:
                found.setdefault(name.split(".")[0], set()).add(name)
    if root_imported:  # ``import slimify`` then ``slimify.convert(...)``: a use of the module behind the name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "slimify" and node.attr in LAZY:
                target = LAZY[node.attr]
                if target != module:
                    found.setdefault(target, set()).add(f"slimify.{node.attr}")
    return found


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for module in MODULES:
        graph.add_node(module)
        for target, names in imports_of(module).items():
            if target in MODULES:
                graph.add_edge(module, target, names=sorted(names))
    return graph


def test_every_module_belongs_to_a_stage() -> None:
    stray = [m for m in MODULES if m != "slimify" and _stage(m) not in RANKS]
    assert not stray, f"modules outside every stage of docs/design.md: {stray}"


def test_no_import_cycles() -> None:
    cycles = list(nx.simple_cycles(import_graph()))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_imports_go_one_way() -> None:
    wrong = []
    for source, target, data in import_graph().edges(data=True):
        if source == "slimify" or target == "slimify":  # the public API: lazy names of every stage
            continue
        if RANKS[_stage(target)] > RANKS[_stage(source)]:
            wrong.append(f"{source} → {target} ({', '.join(data['names'])})")
    assert not wrong, "imports against the pipeline's direction:\n" + "\n".join(wrong)


def design_table() -> dict[str, set[str]]:
    """stage → the stages it may import: docs/design.md's *Layout* table (first and last columns)."""
    section = (ROOT / "docs" / "design.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| `")]
    names = [[name.removesuffix(".py").removesuffix("/") for name in re.findall(r"`([^`]+)`", row[0])] for row in rows]
    base = set(names[0])
    table: dict[str, set[str]] = {}
    for stages, row in zip(names, rows):
        allowed = set(re.findall(r"`([^`]+)`", row[-1])) | (base if re.match(r"base\b", row[-1]) else set())
        table.update({stage: allowed for stage in stages})
    return table


DESIGN = design_table()


def test_the_design_table_has_every_stage_once_in_pipeline_order() -> None:
    assert set(DESIGN) == set(RANKS), set(DESIGN) ^ set(RANKS)
    backwards = [(s, t) for s, allowed in DESIGN.items() for t in allowed
                 if RANKS[t] > RANKS[s] or t not in RANKS]
    assert not backwards, f"docs/design.md lets a stage import a later one (or an unknown one): {backwards}"


def test_imports_follow_the_design_table() -> None:
    wrong = []
    for source, target, data in import_graph().edges(data=True):
        if source == "slimify" or target == "slimify" or _stage(source) == _stage(target):
            continue  # the public API's lazy names; a stage's own modules
        if _stage(target) not in DESIGN[_stage(source)]:
            wrong.append(f"{source} → {target} ({', '.join(data['names'])})")
    assert not wrong, "imports docs/design.md's Layout table does not allow:\n" + "\n".join(wrong)


def test_no_module_imports_another_modules_private_names() -> None:
    """A ``_name`` is its module's own: what another module needs is public (issue 26: the width
    path once imported the plan's private helpers)."""
    found = {(module, name) for module in MODULES for target, names in imports_of(module).items()
             for name in names if target in MODULES and name != target
             and name.rpartition(".")[2].startswith("_") and not name.rpartition(".")[2].startswith("__")}
    assert not found, sorted(found)


def test_only_the_cli_knows_click() -> None:
    users = [m for m in MODULES if "click" in imports_of(m) and _stage(m) != "cli"]
    assert not users, f"click imported below slimify/cli/: {users}"


def cli_import_faults(source: str) -> list[str]:
    """What a module of ``slimify/cli/`` imports beyond its allowance: ``slimify``'s public names
    (``from slimify import X``, ``slimify.X``), its own folder's modules, click and the standard
    library. Everything else the commands need is a public function of the package that owns it."""
    faults = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            faults.append(f"line {node.lineno}: relative import")
        elif isinstance(node, ast.ImportFrom) and node.module == "slimify":
            faults += [f"line {node.lineno}: slimify.{a.name} is not public" for a in node.names if a.name not in PUBLIC]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for module in [a.name for a in node.names] if isinstance(node, ast.Import) else [str(node.module)]:
                top = module.split(".")[0]
                allowed = (module == "slimify" or module == "slimify.cli" or module.startswith("slimify.cli.")
                           or top == "click" or (top != "slimify" and top in sys.stdlib_module_names))
                if not allowed:
                    faults.append(f"line {node.lineno}: imports {module}")
        elif isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "slimify" and node.attr not in PUBLIC:
            faults.append(f"line {node.lineno}: slimify.{node.attr} is not public")
    return faults


def test_the_cli_uses_only_the_public_api() -> None:
    faults = [f"{m}: {fault}" for m in MODULES if _stage(m) == "cli" for fault in cli_import_faults(MODULES[m].read_text())]
    assert not faults, "slimify/cli/ reaches past the public API (slimify/__init__.py's __all__):\n" + "\n".join(faults)


def test_the_cli_check_reads_every_kind_of_import() -> None:
    """The check itself: each way past the public API is caught, the allowed ones are not."""
    allowed = ("import json\nimport click\nimport slimify\nfrom slimify import convert, SlimifyError\n"
               "from slimify.cli.app import command\nslimify.load('m.slim')\n")
    assert cli_import_faults(allowed) == []
    for wrong in ("import torch", "from slimify.store.atomic import atomic_path", "import slimify.state",
                  "from slimify import get_state", "slimify.state.get_state(net)", "from . import app",
                  "from safetensors.torch import save_file"):
        assert len(cli_import_faults(wrong)) == 1, wrong


def test_rewrite_never_traces() -> None:
    for module in MODULES:
        if _stage(module) == "rewrite":
            found = imports_of(module)
            assert "slimify.analysis.trace" not in found and "slimify.analysis.shape_pass" not in found, module
            assert not any(n.startswith("torch.fx") for names in found.values() for n in names), module


def test_the_walker_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The check itself: an import inside a function is an edge (a cycle hidden there would fail)."""
    assert "slimify.ordering.permute" in imports_of("slimify.pipeline")
    assert "slimify.state" in imports_of("slimify.deploy.formats")  # imported inside write_width


HELP_COMMANDS = [[], ["convert"], ["inspect"], ["reorder"], ["export"], ["profile"], ["pick"], ["finetune"],
                 ["calibrate"], ["eval"], ["demo"], ["search"]]


@pytest.mark.parametrize("args", HELP_COMMANDS, ids=lambda a: " ".join(a) or "slimify")
def test_help_imports_no_torch(args: list[str]) -> None:
    code = ("import sys\nfrom slimify.cli.app import main\n"
            f"try:\n    main({args + ['--help']!r})\nexcept SystemExit:\n    pass\n"
            "import slimify\n"
            "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert "Usage:" in out.stdout, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-500:]


def test_the_design_table_is_read_as_written() -> None:
    """The check itself: rows, the *base* shorthand and a stage that may not import a later one."""
    assert DESIGN["deploy"] == {"analysis", "rewrite", "store", "errors", "state", "registry", "gcpause", "device",
                                "preprocess"}
    assert "deploy" in DESIGN["selection"] and "selection" not in DESIGN["deploy"]
    assert DESIGN["__main__"] == {"cli"} and DESIGN["state"] == {"errors"}
