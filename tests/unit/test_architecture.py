"""The shape of the house (STYLE.md): imports only look down.

Every import counts, also those inside functions and under TYPE_CHECKING: a cycle hidden in a
function is still a cycle the next change trips over."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent.parent / "provision"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODULES else None


def _imports(module: str) -> list[tuple[str, str]]:
    """(imported module, imported name or '') for every provision import of ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names if alias.name.startswith("provision")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.startswith("provision"):
                out += [(source, alias.name) for alias in node.names]
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for source, name in _imports(module):
            target = _resolve(f"{source}.{name}" if name else source)
            if target and target != module:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_package() -> None:
    assert _cycles(_graph()) == []


def test_no_module_imports_a_private_name_of_another() -> None:
    private = [(module, f"{source}.{name}") for module in MODULES for source, name in _imports(module)
               if name.startswith("_") and not name.startswith("__") and _resolve(f"{source}.{name}") != module]  # fmt: skip
    assert private == []


def test_the_runner_imports_no_ui_and_no_simulator() -> None:
    imported = _graph()["provision.runner"]
    assert not {m for m in imported if m in ("provision.counter", "provision.ui") or m.startswith("provision.sim")}


def _attributes(source: str) -> set[str]:
    """Every ``x.name`` in the code, and every private ``x._name`` reached on another object than self."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            mine = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if not (node.attr.startswith("_") and mine):
                names.add(node.attr)
    return names


def _called(source: str) -> set[str]:
    """Every method called as ``x.name(...)``."""
    return {node.func.attr for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}  # fmt: skip


def _source(module: str) -> str:
    return MODULES[module].read_text(encoding="utf-8")


def test_one_event_loop_the_runners() -> None:
    """Only the runner's loop reads a card source's events (backend.py hands the events of several
    sources on); the counter screen and the composition root have their turn inside it."""
    readers = {m for m in MODULES if "events" in _called(_source(m))}
    assert readers == {"provision.runner", "provision.backend"}, readers


def test_the_counter_screen_is_a_ui_the_runner_is_given() -> None:
    """The screen neither drives nor ends the run, nor patches it: it implements ``RunUI`` and asks
    the runner through public methods only."""
    tree = ast.parse(_source("provision.counter"))
    assert "run" not in {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}  # no day of its own
    used = _attributes(_source("provision.counter"))
    drives = {"events", "handle_card", "load_card", "take_reader", "finish", "source", "run"}
    assert not used & drives, used & drives
    assert not {name for name in used if name.startswith("_") and not name.startswith("__")}
    assert not [node for node in ast.walk(tree)
                if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign)
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute)]  # fmt: skip


def test_no_command_module_talks_to_a_card_directly() -> None:
    for command in ("provision.cli", "provision.cli_audit", "provision.demo"):
        direct = {m for m in _graph()[command] if m.startswith(("provision.piv", "provision.card"))}
        assert not direct, f"{command} imports {direct}: it should ask a backend"


def test_the_checker_sees_a_cycle_and_a_private_import() -> None:
    """The checks above would fail on the shapes they forbid."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert _resolve("provision.audit.chain.AuditLog") == "provision.audit.chain"
    assert _attributes("run.source.events(1)\nself._busy = 1\nrunner._busy.add(1)") == {"source", "events", "add", "_busy"}
