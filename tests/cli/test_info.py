"""`ats-wsi info`: a table of each slide; unreadable ones listed with their error."""
from __future__ import annotations

from cli_helpers import cli, explain

from ats_wsi.slide import open_slide


def _table(stdout: str) -> dict[str, dict[str, str]]:
    """The table `info` prints, as {slide: {column: value}} (columns are split on 2+ spaces)."""
    import re

    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    header = re.split(r"\s{2,}", lines[0].strip())
    assert set(lines[1].replace(" ", "")) == {"-"}, lines[1]
    rows = [dict(zip(header, re.split(r"\s{2,}", ln.strip()))) for ln in lines[2:]]
    return {r["slide"]: r for r in rows}


def test_info_describes_good_slides_and_lists_bad_ones_with_exit_code_1(predict_input, tmp_path):
    good = predict_input.good[0]
    missing = tmp_path / "missing.svs"
    proc = cli("info", good, predict_input.garbage, missing, predict_input.truncated)

    assert proc.returncode == 1, explain(proc)
    table = _table(proc.stdout)
    assert list(table) == [str(good)]
    row = table[str(good)]
    with open_slide(good) as s:
        w, h = s.dimensions
        assert row["size (w x h)"] == f"{w} x {h}"
        assert row["levels"] == str(s.level_count)
        assert row["downsamples"] == ",".join(f"{d:g}" for d in s.level_downsamples)
        assert float(row["mpp"]) == 0.5
        assert row["tile"] == "256x256"
        assert row["format"] == "aperio"
    assert s.level_count >= 2 and w != h

    err = proc.stderr
    assert "3 slide(s) could not be read" in err
    assert f"{predict_input.garbage}: CorruptSlideError" in err
    assert f"{missing}: SlideNotFoundError" in err
    assert f"{predict_input.truncated}: CorruptSlideError" in err
    assert "truncated" in err.split(f"{predict_input.truncated}:")[1].splitlines()[0]
    assert "Traceback" not in err


def test_info_expands_folders_and_exits_0_when_all_slides_read(slide_set):
    proc = cli("info", slide_set.slides[0].parent)
    assert proc.returncode == 0, explain(proc)
    # The folder holds slides, their .lesions.json and manifest.csv: only slides are listed.
    assert sorted(_table(proc.stdout)) == sorted(str(p) for p in slide_set.slides)


def test_info_without_slides_says_so_with_exit_code_2(tmp_path):
    proc = cli("info", tmp_path)
    assert proc.returncode == 2
    assert "no slides found" in proc.stderr
