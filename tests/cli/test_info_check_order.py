"""`ats-wsi info --check`: before or after the slides, with or without N, the same table."""
from __future__ import annotations

import pytest

from ats_wsi.cli import main
from ats_wsi.data.synthetic import write_synthetic_slide


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("info")
    paths = [folder / "a.svs", folder / "b.svs"]
    for i, path in enumerate(paths):  # 4 x 3 and 5 x 3 level-0 tiles of 256²
        write_synthetic_slide(path, 1024 + 256 * i, 768, n_lesions=0, n_decoys=0, seed=i)
    return [str(p) for p in paths]


def _table(argv, capsys) -> tuple[int, dict[str, str], str]:
    """``(status, {slide: its "tiles decoded" cell}, stderr)``."""
    status = main(argv)
    out, err = capsys.readouterr()
    rows = [line.split("  ") for line in out.splitlines()[2:]]  # after the header and its rule
    return status, {r[0].strip(): r[-1].strip() for r in rows}, err


@pytest.mark.parametrize("argv, decoded", [
    (["info", "--check", "{a}", "{b}"], ("12 of 12 ok", "15 of 15 ok")),  # its value is a slide, not N
    (["info", "{a}", "{b}", "--check"], ("12 of 12 ok", "15 of 15 ok")),
    (["info", "{a}", "--check", "{b}"], ("12 of 12 ok", "15 of 15 ok")),
    (["info", "--check", "4", "{a}", "{b}"], ("4 of 12 ok", "4 of 15 ok")),
])
def test_check_works_before_and_after_the_slides_and_keeps_their_order(argv, decoded, slides, capsys):
    a, b = slides
    status, table, err = _table([v.format(a=a, b=b) for v in argv], capsys)
    assert status == 0, err
    assert list(table) == [a, b] and tuple(table.values()) == decoded


def test_no_slide_is_one_line_and_status_2(capsys):
    status, _, err = _table(["info", "--check"], capsys)
    assert status == 2 and err.strip() == "ats-wsi info: give at least one slide, folder, glob pattern or checkpoint"
