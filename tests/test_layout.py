"""The package's shape: every module imports, the import graph has no cycles, no sys.path edits.

The import graph holds the imports that run when a module is imported: module level and class
bodies, not function bodies (imports deferred to first use) nor ``if TYPE_CHECKING:`` blocks.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest
from procs import run

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "budget_forcing"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_time_nodes(node: ast.AST):
    """The statements of ``node`` that run at import time: skip function bodies and TYPE_CHECKING blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            yield from (n for stmt in child.orelse for n in [stmt, *import_time_nodes(stmt)])
            continue
        yield child
        yield from import_time_nodes(child)


def imported_modules(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports when it is imported."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in import_time_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import module` imports the module; `from module import name` the module itself.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # `import budget_forcing.a.b` runs budget_forcing.a.b; keep the longest known module name.
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes, or None (depth-first search with colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if colour[nxt] == 0 and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour[node] == 0 and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_has_no_cycles():
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()}
    # The walk sees module-level edges, and skips deferred and type-checking ones.
    assert "budget_forcing.processor" in graph["budget_forcing.stopping"]
    assert "budget_forcing.generation" in graph["budget_forcing.cli"]
    assert "budget_forcing.processor" not in graph["budget_forcing"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.endswith("__main__")))
def test_every_module_imports(name):
    try:
        importlib.import_module(name)
    except ImportError as err:  # an integration whose extra is not installed must say which one
        assert "pip install 'budget-forcing[" in str(err), f"{name}: {err}"


def test_no_sys_path_edits_anywhere():
    tracked = run(
        ["git", "ls-files", "*.py", "*.toml", "*.cfg", "*.ini"], cwd=REPO, timeout=60
    ).stdout.split()
    pattern = re.compile(r"sys\.path\.(insert|append)|^\s*pythonpath\s*=", re.M)
    offenders = [f for f in tracked if f != "tests/test_layout.py" and pattern.search((REPO / f).read_text())]
    assert tracked and not offenders, offenders


def test_help_does_not_import_torch():
    probe = (
        "import sys\nfrom budget_forcing.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)), file=sys.stderr)"
    )
    done = run([sys.executable, "-c", probe], timeout=120)
    assert "usage: budget-forcing" in done.stdout
    assert done.stderr.strip() == "[]"
