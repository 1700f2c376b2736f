"""Without the survival extra, survival metrics and training stop with one line naming the extra."""
from __future__ import annotations

import sys

import pytest

from ats_wsi.errors import MissingExtraError


def test_missing_lifelines_is_a_missing_extra_error_naming_the_extra(monkeypatch):
    from ats_wsi.outcomes.survival_metrics import harrell_c

    monkeypatch.setitem(sys.modules, "lifelines", None)  # what `import lifelines` meets when it is not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'ats-wsi\[survival\]'"):
        harrell_c([1.0, 2.0], [1.0, 2.0], [1, 1])


def test_train_without_lifelines_stops_before_any_work(monkeypatch, tmp_path, capsys):
    from ats_wsi.cli import main

    monkeypatch.setitem(sys.modules, "lifelines", None)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,time,event\na.svs,1,1\n")
    assert main(["train", str(manifest), "--out", str(tmp_path / "run"), "--task", "survival"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MissingExtraError" in err[0] and "ats-wsi[survival]" in err[0]
    assert not (tmp_path / "run").exists()
