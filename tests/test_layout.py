"""The package's plan, checked from the source alone (``ast``; nothing is imported).

``layerprobe/`` is split into stages; a stage may import only from the stages before it:

    base (_version, errors, options) → metrics/, model/ → io/ → snapshot/ → freezing/ → results/
    → comparison/ → tracking/ → integrations/ → demo/ → cli

Every import counts — at module level and inside functions (a deferred import is still a
dependency) — except those under ``if TYPE_CHECKING:`` (annotations only, never run). The tests
fail on an import cycle between modules, on an import that runs against the direction above, on
a private name (``_x``, or a path through a ``_module``) imported from another stage, on a
cross-stage import of a name its module does not list in ``__all__``, and on more than
:data:`MAX_FLAT` modules left flat in ``layerprobe/``.

The scripts around the package (benchmarks, figures, scripts, the analyses) use public names only:
names listed in the ``__all__`` of a public module of layerprobe.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from dataclasses import dataclass


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "layerprobe")

#: the stages in import order; a module may import from its own stage and from the stages before it
STAGES: tuple[tuple[str, ...], ...] = (
    ("_version", "errors", "options"),
    ("metrics", "model"),
    ("io",),
    ("snapshot",),
    ("freezing",),
    ("results",),
    ("comparison",),
    ("tracking",),
    ("integrations",),
    ("demo",),
    ("cli",),
)
RANK = {unit: i for i, units in enumerate(STAGES) for unit in units}
#: units of one stage that form one unit (the base modules may import each other)
SAME_UNIT = {"_version": "base", "errors": "base", "options": "base"}
#: the one private module every stage may read: the version string
SHARED_PRIVATE = {"layerprobe._version"}
MAX_FLAT = 8


@dataclass(frozen=True)
class Import:
    importer: str  # module doing the import
    target: str  # module imported (the module a `from` imports a name from, or a submodule)
    name: str | None  # the name imported from ``target``, None for a module import
    line: int


def _module_name(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join(rel)


def package_modules() -> dict[str, str]:
    """``{dotted module name: file}`` of every module of layerprobe."""
    out = {}
    for d, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                out[_module_name(path, ROOT)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below ``node``, skipping ``if TYPE_CHECKING:`` bodies (their ``else`` runs)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield stmt
                yield from _walk(stmt)
            continue
        yield child
        yield from _walk(child)


def imports_of(path: str, module: str, modules: dict[str, str] | None = None) -> list[Import]:
    """The layerprobe imports of one file (``module`` is its dotted name, for relative imports)."""
    modules = modules if modules is not None else package_modules()
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_pkg = os.path.basename(path) == "__init__.py"
    package = module.split(".") if is_pkg else module.split(".")[:-1]
    out = []
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(module, a.name, None, node.lineno) for a in node.names
                    if a.name.split(".")[0] == "layerprobe"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "layerprobe":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in modules:  # `from layerprobe.io import outputs`: the submodule
                    out.append(Import(module, sub, None, node.lineno))
                else:
                    out.append(Import(module, target, a.name, node.lineno))
    return out


def unit_of(module: str) -> str | None:
    """The stage unit of a package module (``layerprobe.io.files`` -> ``io``); None for the package."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return parts[1]


def _graph() -> tuple[dict[str, str], dict[str, list[Import]]]:
    modules = package_modules()
    return modules, {m: imports_of(p, m, modules) for m, p in modules.items()}


def _exported(path: str) -> set[str] | None:
    """The literal ``__all__`` of a module (a list or tuple of strings, possibly with ``*`` parts), or None."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
            if isinstance(node.value, (ast.List, ast.Tuple)):
                return {e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            return None
    return None


def _private(module: str, name: str | None) -> bool:
    """``_x`` as the name, or a ``_module`` on the path (``layerprobe._version`` excepted)."""
    def private(part: str) -> bool:
        return part.startswith("_") and not part.startswith("__")

    if name is not None and private(name):
        return True
    return module not in SHARED_PRIVATE and any(private(p) for p in module.split("."))


# --------------------------------------------------------------------------- the package


def test_every_module_belongs_to_a_stage():
    modules = package_modules()
    unknown = sorted(m for m in modules if unit_of(m) is not None and unit_of(m) not in RANK)
    assert not unknown, f"modules outside the stages {sorted(RANK)}: {unknown} (add the stage to STAGES and docs)"


def test_at_most_eight_flat_modules():
    flat = sorted(f for f in os.listdir(PACKAGE) if f.endswith(".py"))
    assert len(flat) <= MAX_FLAT, f"{len(flat)} modules flat in layerprobe/: {flat}"


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan, iterative enough for a few hundred modules
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_find_cycles_finds_a_cycle_through_a_deferred_import():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_checker_sees_deferred_imports_and_skips_type_checking(tmp_path):
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from layerprobe.cli import main\n"
           "def f():\n    from layerprobe.io.files import load_json\n    from .outputs import atomic_write\n")
    p = tmp_path / "m.py"
    p.write_text(src)
    found = imports_of(str(p), "layerprobe.io.m", {})
    assert [(i.target, i.name) for i in found] == [("layerprobe.io.files", "load_json"),
                                                   ("layerprobe.io.outputs", "atomic_write")]


def test_no_import_cycles():
    modules, imports = _graph()
    graph = {m: {i.target for i in imps if i.target in modules and i.target != m} for m, imps in imports.items()}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (deferred imports included): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_imports_run_one_way():
    modules, imports = _graph()
    wrong = []
    for m, imps in imports.items():
        src = unit_of(m)
        if src is None:  # layerprobe/__init__.py: the lazy public names, imported by string
            continue
        for i in imps:
            dst = unit_of(i.target)
            if dst is None or dst not in RANK or src not in RANK:
                continue
            if SAME_UNIT.get(src, src) == SAME_UNIT.get(dst, dst):
                continue
            if RANK[dst] >= RANK[src]:
                wrong.append(f"{m}:{i.line} imports {i.target} ({dst} is not before {src})")
    assert not wrong, "imports against the stage order:\n" + "\n".join(wrong)


def test_no_private_names_across_stages():
    modules, imports = _graph()
    wrong = []
    for m, imps in imports.items():
        src = unit_of(m)
        for i in imps:
            dst = unit_of(i.target)
            if src is None or dst is None or SAME_UNIT.get(src, src) == SAME_UNIT.get(dst, dst):
                continue
            if _private(i.target, i.name):
                wrong.append(f"{m}:{i.line} imports {i.target}{'.' + i.name if i.name else ''}")
    assert not wrong, "private names imported from another stage:\n" + "\n".join(wrong)


def test_cross_stage_imports_use_the_all_of_their_module():
    modules, imports = _graph()
    wrong = []
    for m, imps in imports.items():
        src = unit_of(m)
        for i in imps:
            dst = unit_of(i.target)
            if src is None or dst is None or i.name is None or SAME_UNIT.get(src, src) == SAME_UNIT.get(dst, dst):
                continue
            exported = _exported(modules[i.target]) if i.target in modules else None
            if exported is None:
                wrong.append(f"{i.target} has no literal __all__ (imported by {m})")
            elif i.name not in exported:
                wrong.append(f"{m}:{i.line} imports {i.name}, not in {i.target}.__all__")
    assert not wrong, "cross-stage imports outside the modules' __all__:\n" + "\n".join(sorted(set(wrong)))


# --------------------------------------------------------------------------- scripts around the package


def _script_files(folders: tuple[str, ...], skip: tuple[str, ...] = ()) -> list[str]:
    out = []
    for folder in folders:
        for d, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = [x for x in dirs if x not in ("cache", "results", "__pycache__") and not x.startswith("cache")
                       and not x.startswith("results")]
            out += [os.path.join(d, f) for f in files if f.endswith(".py") and f not in skip]
    return sorted(out)


#: the freeze study's own scripts (their owner ports them; the shared study-grid module breaks the cycle)
STUDY_SCRIPTS = ("freeze_study.py", "study_grid.py", "study_measure.py", "study_predict.py", "study_report.py",
                 "study_tasks.py")


def _public_violations(paths: list[str]) -> list[str]:
    modules = package_modules()
    wrong = []
    for path in paths:
        rel = os.path.relpath(path, ROOT)
        for i in imports_of(path, "script." + os.path.basename(path)[:-3], modules):
            if i.target not in modules:
                wrong.append(f"{rel}:{i.line} imports {i.target}, which is not a module of layerprobe")
                continue
            if _private(i.target, i.name):
                wrong.append(f"{rel}:{i.line} imports the private {i.target}{'.' + i.name if i.name else ''}")
                continue
            exported = _exported(modules[i.target])
            if i.name is not None and (exported is None or i.name not in exported):
                wrong.append(f"{rel}:{i.line} imports {i.name}, not in {i.target}.__all__")
    return wrong


def test_benchmarks_figures_scripts_use_public_names():
    paths = _script_files(("benchmarks", "figures", "scripts")) + [os.path.join(ROOT, "analyses", "walkthrough.py")]
    wrong = _public_violations(paths)
    assert not wrong, "\n".join(wrong)


def test_study_scripts_use_public_names_and_no_cycle():
    paths = [os.path.join(ROOT, "analyses", f) for f in STUDY_SCRIPTS if os.path.isfile(os.path.join(ROOT, "analyses", f))]
    wrong = _public_violations(paths)
    graph: dict[str, set[str]] = {}
    names = {os.path.basename(p)[:-3] for p in _script_files(("analyses",))}
    for path in _script_files(("analyses",)):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in names}
            elif isinstance(node, ast.ImportFrom) and node.module in names:
                deps.add(node.module)
        graph[os.path.basename(path)[:-3]] = deps
    cycles = find_cycles(graph)
    assert not wrong and not cycles, "\n".join(wrong + ["cycle: " + " <-> ".join(c) for c in cycles])
