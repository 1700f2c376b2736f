"""The shape of ats_wsi.slide: imports go one way, modules stay small, torch stays out."""
from __future__ import annotations

import ast
from pathlib import Path

import ats_wsi.slide

SLIDE_DIR = Path(ats_wsi.slide.__file__).parent


def _imports_within_slide(path: Path) -> set[str]:
    """Modules of ats_wsi.slide that ``path`` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out.update(alias.name for alias in node.names)
            elif node.level == 0 and (node.module or "").startswith("ats_wsi.slide."):
                out.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[2] for a in node.names if a.name.startswith("ats_wsi.slide."))
    return out - {path.stem}


def test_no_import_circle_in_slide():
    graph = {p.stem: _imports_within_slide(p) for p in SLIDE_DIR.glob("*.py") if p.stem != "__init__"}
    state: dict[str, int] = {}

    def visit(mod: str, trail: list[str]) -> None:
        if state.get(mod) == 1:
            raise AssertionError("import circle: " + " -> ".join([*trail, mod]))
        if state.get(mod) == 2 or mod not in graph:
            return
        state[mod] = 1
        for dep in sorted(graph[mod]):
            visit(dep, [*trail, mod])
        state[mod] = 2

    for mod in sorted(graph):
        visit(mod, [])
    assert "_detect" not in graph["slide"] and "_open" not in graph["slide"]


def test_no_module_is_over_400_lines():
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in SLIDE_DIR.glob("*.py")}
    assert max(sizes.values()) <= 400, sizes


def test_public_names_are_importable_from_the_package():
    from ats_wsi.slide import (  # noqa: F401
        FILL_VALUE, MAX_READ_PIXELS, SLIDE_SUFFIXES, TISSUE_DOWNSAMPLE, LowView, Slide, TileCache, find_slides,
        is_slide_path, level_origin, open_slide, read_low_view, tissue_mask,
    )

    assert set(ats_wsi.slide.__all__) == {
        "FILL_VALUE", "MAX_READ_PIXELS", "TISSUE_DOWNSAMPLE", "Slide", "detect_format", "level_origin", "open_slide",
        "SLIDE_SUFFIXES", "find_slides", "is_slide_path", "tissue_mask", "LowView", "read_low_view", "TileCache",
    }


def test_a_slide_reopens_through_open_slide_when_unpickled():
    assert ats_wsi.slide.Slide._opener is ats_wsi.slide.open_slide
