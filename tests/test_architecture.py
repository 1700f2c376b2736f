"""The house rules of docs/architecture.md, checked on the source: imports point down,
no import circle, no file over ~500 lines, argparse and printing only in the CLI."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ats_wsi"

# Floors, lowest first. A module may import its own floor's packages and those below.
FLOORS = [
    {"errors", "_lazy", "atomic", "geometry", "metrics", "curves", "roi", "outcomes", "units"},
    {"slide"},
    {"sampling", "patches"},
    {"model", "reference_api", "nets", "encoders", "zoom"},
    {"classifier", "outputs", "zoom_sheet", "geojson", "data", "exports"},
    {"run"},
    {"cli"},
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """ats_wsi modules imported anywhere in the file (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ats_wsi"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("ats_wsi"):
                continue
            for alias in node.names:  # `from . import x` may name a module
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOOR.get(parts[1]) if len(parts) > 1 else None


def test_every_room_has_a_floor():
    rooms = {m.split(".")[1] for m in MODULES if "." in m}
    assert rooms <= set(FLOOR), f"rooms without a floor in this test: {sorted(rooms - set(FLOOR))}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    mine = _floor(name)
    if mine is None:  # ats_wsi/__init__.py: lazy re-exports of the public names
        return
    upward = sorted(m for m in GRAPH[name] if (_floor(m) or 0) > mine)
    assert not upward, f"{name} (floor {mine}) imports upward: {upward}"


def test_no_import_circle():
    seen, on_path, cycles = set(), [], []

    def visit(node):
        if node in on_path:
            cycles.append(on_path[on_path.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        on_path.append(node)
        for nxt in sorted(GRAPH[node]):
            # a package's __init__ re-exporting its own modules is not a circle
            if nxt.startswith(node + ".") or node.startswith(nxt + ".") and _is_reexport(nxt, node):
                continue
            visit(nxt)
        on_path.pop()

    for name in sorted(GRAPH):
        visit(name)
    assert not cycles, f"import circles: {cycles[:5]}"


def _is_reexport(package: str, module: str) -> bool:
    return MODULES[package].name == "__init__.py"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_file_over_the_limit(name):
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines (limit {MAX_LINES})"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_cli_parses_argv_prints_or_exits(name):
    if name.startswith("ats_wsi.cli"):
        return
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if "argparse" in names:
                bad.append(f"line {node.lineno}: imports argparse")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in ("print", "exit"):
                bad.append(f"line {node.lineno}: calls {f.id}()")
            if isinstance(f, ast.Attribute) and f.attr == "exit" and getattr(f.value, "id", "") == "sys":
                bad.append(f"line {node.lineno}: calls sys.exit()")
        elif isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if getattr(exc, "id", "") == "SystemExit":
                bad.append(f"line {node.lineno}: raises SystemExit")
    assert not bad, f"{MODULES[name]}: " + "; ".join(bad)


def test_the_graph_sees_imports_inside_functions():
    # cli.predict imports run.predict and classifier inside run(): the rules above must see them
    assert {"ats_wsi.run.predict", "ats_wsi.classifier"} <= GRAPH["ats_wsi.cli.predict"]
    assert "ats_wsi.classifier" in GRAPH["ats_wsi.run.predict"]


def test_the_sampler_and_the_encoders_know_nothing_of_each_other():
    """An encoder embeds pixels; the source owns its boxes and read geometry
    (patches.SlidePatchSource); the classifier's feature step composes them.
    encoders/ reads the µm/px bounds from the floor (ats_wsi.units), nothing from patches/ or slide/."""
    assert not {m for m in GRAPH["ats_wsi.model"] if m.startswith("ats_wsi.encoders")}
    for name in (m for m in MODULES if m.startswith("ats_wsi.encoders")):
        below = {m for m in GRAPH[name] if m.startswith(("ats_wsi.patches", "ats_wsi.slide"))}
        assert not below, f"{name} imports {sorted(below)}"


def test_run_draws_nothing():
    """run/ reports progress through callbacks (run/_progress.py); only cli/ imports tqdm."""
    for name, path in MODULES.items():
        if name.startswith("ats_wsi.cli"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                 and any((a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0] == "tqdm"
                         for a in n.names)]
        assert not found, f"{path} imports tqdm (lines {found}): take a progress callback instead"


def _imports_timm(tree: ast.AST) -> bool:
    """An ``import timm`` / ``from timm ...`` or ``import_module("timm")`` anywhere in the file."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "timm" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "timm":
            return True
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__"):
            if any(isinstance(c, ast.Constant) and c.value == "timm" for a in node.args for c in ast.walk(a)):
                return True
    return False


def test_timm_is_imported_in_one_place():
    """One road to a timm network: a "timm:<name>" feature net (nets.py) and an encoder spec
    (encoders/) both come through encoders.loaders.timm_model."""
    found = {name for name, path in MODULES.items() if _imports_timm(ast.parse(path.read_text(encoding="utf-8")))}
    assert found == {"ats_wsi.encoders.loaders"}, f"timm imported in {sorted(found)}"


def _born_outside_init(tree: ast.AST) -> list[str]:
    """``Class.attr (line)`` of each ``self.attr = ...`` in a method whose attribute neither
    ``__init__`` (nor a method it calls, nor ``__post_init__``) sets nor the class declares."""
    found = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        methods = {m.name: m for m in cls.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))}
        declared = {t.id for n in cls.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
        declared |= {m.name for m in methods.values()}  # properties (their setters assign through them)
        declared.add("training")  # nn.Module's, set by Module.__init__ and train()
        reach = [methods[n] for n in ("__init__", "__post_init__") if n in methods]
        for f in reach:  # and the methods they call: a reset helper shared with __setstate__
            for n in ast.walk(f):
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and _is_self(n.func.value) \
                        and n.func.attr in methods and methods[n.func.attr] not in reach:
                    reach.append(methods[n.func.attr])
        born = {a for f in reach for a, _ in _self_assignments(f)}
        for f in methods.values():
            if f not in reach:
                found += [f"{cls.name}.{a} (line {line})" for a, line in _self_assignments(f)
                          if a not in born and a not in declared]
    return found


def _is_self(node) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _self_assignments(fn) -> list[tuple[str, int]]:
    out = []
    for n in ast.walk(fn):
        targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []
        for t in targets:
            for e in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if isinstance(e, ast.Attribute) and _is_self(e.value):
                    out.append((e.attr, n.lineno))
    return out


PLUGIN = PACKAGE.parent / "plugins" / "napari_ats_wsi"


@pytest.mark.parametrize("path", sorted([*MODULES.values(), *PLUGIN.rglob("*.py")]), ids=lambda p: p.name)
def test_attributes_are_born_in_init(path):
    """A reader of ``__init__`` sees every attribute an object has (no ``getattr(self, "x", None)``
    for one that a later method may or may not have made)."""
    found = _born_outside_init(ast.parse(path.read_text(encoding="utf-8")))
    assert not found, f"{path}: attributes first set outside __init__: {found}"


def test_the_birth_check_sees_an_attribute_born_in_a_method():
    tree = ast.parse("class A:\n    def __init__(self):\n        self.a = 1\n        self._reset()\n"
                     "    def _reset(self):\n        self.b = 2\n    def later(self):\n        self.c, self.a = 3, 4\n")
    assert _born_outside_init(tree) == ["A.c (line 8)"]


def _private_names(tree: ast.AST) -> set[str]:
    """The ``_names`` (not dunders) a module defines: its functions, classes and methods,
    the names it binds and the attributes it assigns (``self._x = ...``, ``_y: int``)."""
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
            names.add(n.attr)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
    return {x for x in names if x.startswith("_") and not x.startswith("__")}


def _friend_reads(trees: dict[str, ast.AST]) -> list[str]:
    """``module:line: x._name`` wherever a module reaches into an object for a ``_name`` that only
    other modules define (``x`` not ``self``/``cls``; ``getattr(x, "_name")`` too): a friend module
    leaning on another's internals, which a rename there breaks silently."""
    own = {name: _private_names(tree) for name, tree in trees.items()}
    found = []  # (module, line, text)
    for name, tree in trees.items():
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute):
                target, attr = n.value, n.attr
            elif isinstance(n, ast.Call) and getattr(n.func, "id", "") in ("getattr", "hasattr", "setattr") \
                    and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant) and isinstance(n.args[1].value, str):
                target, attr = n.args[0], n.args[1].value
            else:
                continue
            if not attr.startswith("_") or attr.startswith("__") or attr in own[name]:
                continue
            if isinstance(target, ast.Name) and target.id in ("self", "cls"):
                continue
            if any(attr in names for other, names in own.items() if other != name):
                found.append((name, n.lineno, f"{name}:{n.lineno}: {ast.unparse(target)}.{attr}"))
    return [text for *_, text in sorted(found)]


def test_no_module_reads_another_modules_private_attributes():
    """What one module keeps private (``_name``) no other module reads: a helper gets what it needs
    through public methods or arguments (TiffSlide's levels are TiffTiles objects, not friends'
    reach into ``_tiff_levels``). Reading ``self._x``/``cls._x`` (a base class's hook) is the class's own."""
    trees = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}
    found = _friend_reads(trees)
    assert not found, "modules reading another module's private attributes:\n" + "\n".join(found)


def test_the_friend_check_sees_a_module_reading_anothers_private_attribute():
    owner = ast.parse("class A:\n    def __init__(self):\n        self._levels = []\n        self._file = None\n"
                      "    def _hook(self):\n        return self._levels\n")
    friend = ast.parse("def f(a):\n    n = len(a._levels)\n    return getattr(a, '_file', None)\n"
                       "class B:\n    def g(self):\n        return self._hook(), self._mine\n"
                       "    def h(self, b):\n        self._mine = 1\n        return b._mine\n")
    assert _friend_reads({"owner": owner, "friend": friend}) == ["friend:2: a._levels", "friend:3: a._file"]
