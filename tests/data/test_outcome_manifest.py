"""Survival and regression manifests: the usual column spellings, every bad outcome cell named
with its line before training, fold numbers, and folds that are disjoint and stratified."""
from __future__ import annotations

from collections import Counter

import pytest

from ats_wsi.data.folds import assign_fold, make_folds, strata_of, write_folds
from ats_wsi.data.manifest import read_cohort
from ats_wsi.errors import ManifestError


def _write(tmp_path, text, name="m.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("header, cells, events", [
    ("path,time,event", ["a.svs,12,1", "b.svs,30.5,0"], [1, 0]),
    ("path,OS.time,OS", ["a.svs,12,1:DECEASED", "b.svs,30.5,0:LIVING"], [1, 0]),
    ("slide,survival_months,status", ["a.svs,12,dead", "b.svs,30.5,alive"], [1, 0]),
    ("slide_path,survival_months,censorship", ["a.svs,12,0", "b.svs,30.5,1"], [1, 0]),  # CLAM's: inverted
])
def test_survival_columns_in_their_usual_spellings(tmp_path, header, cells, events):
    rows = read_cohort(_write(tmp_path, "\n".join([header, *cells]) + "\n"), task="survival").rows
    assert [r.time for r in rows] == [12.0, 30.5]
    assert [r.event for r in rows] == events
    assert all(r.label is None for r in rows)


def test_named_columns_win_and_a_missing_column_says_which_flag(tmp_path):
    m = _write(tmp_path, "path,pfs_days,progressed,time,event\na.svs,5,1,99,0\n")
    row = read_cohort(m, task="survival", time_column="PFS days", event_column="progressed").rows[0]
    assert (row.time, row.event) == (5.0, 1)
    bare = _write(tmp_path, "path,label\na.svs,1\n", "bare.csv")
    with pytest.raises(ManifestError, match=r"time column .*--time-column.* event column .*--event-column"):
        read_cohort(bare, task="survival")


def test_every_bad_outcome_cell_is_listed_with_its_line(tmp_path):
    m = _write(tmp_path, "path,time,event\na.svs,-1,1\nb.svs,abc,2\nc.svs,,\nd.svs,4,1\n")
    with pytest.raises(ManifestError) as info:
        read_cohort(m, task="survival")
    text = str(info.value)
    assert "5 bad row(s)" in text
    for expected in ("m.csv:2: time '-1'", "m.csv:3: time 'abc'", "m.csv:3: event '2'", "m.csv:4: empty time",
                     "m.csv:4: empty event"):
        assert expected in text
    assert "m.csv:5" not in text


def test_prediction_manifests_may_leave_outcomes_empty(tmp_path):
    m = _write(tmp_path, "path,time,event\na.svs,,\nb.svs,3,1\n")
    rows = read_cohort(m, task="survival", require_labels=False).rows
    assert [(r.time, r.event) for r in rows] == [(None, None), (3.0, 1)]


def test_regression_target_from_a_named_or_usual_column(tmp_path):
    m = _write(tmp_path, "path,tumour_fraction,label\na.svs,0.25,x\nb.svs,0.5,y\n")
    assert [r.target for r in read_cohort(m, task="regression", target_column="tumour_fraction").rows] == [0.25, 0.5]
    bad = _write(tmp_path, "path,score\na.svs,inf\nb.svs,\n", "bad.csv")
    with pytest.raises(ManifestError, match=r"bad.csv:2: target 'inf'.*\n.*bad.csv:3: empty target"):
        read_cohort(bad, task="regression")


def test_fold_numbers_are_read_and_a_bad_split_name_keeps_its_message(tmp_path):
    m = _write(tmp_path, "path,label,fold\na.svs,0,0\nb.svs,1,1\nc.svs,0,2\nd.svs,1,2\n")
    rows = read_cohort(m).rows
    assert [r.fold for r in rows] == [0, 1, 2, 2]
    split = {r.path.name: r.split for r in assign_fold(m, rows, 1)}
    assert split == {"b.svs": "test", "c.svs": "val", "d.svs": "val", "a.svs": "train"}
    with pytest.raises(ManifestError, match=r"--fold 7 is not one of the manifest's folds \[0, 1, 2\]"):
        assign_fold(m, rows, 7)
    bad = _write(tmp_path, "path,label,split\na.svs,0,trian\n", "bad.csv")
    with pytest.raises(ManifestError, match=r"bad.csv:2: split 'trian' is not train, val"):
        read_cohort(bad)


def test_made_folds_are_disjoint_cover_every_row_and_are_stratified(tmp_path):
    strata = [0] * 30 + [1] * 10 + [2] * 7
    folds = make_folds(strata, 5, seed=3)
    assert len(folds) == len(strata) and set(folds) == set(range(5))
    sizes = Counter(folds)
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for s in set(strata):
        per_fold = Counter(f for f, t in zip(folds, strata) if t == s)
        counts = [per_fold.get(k, 0) for k in range(5)]
        assert max(counts) - min(counts) <= 1, (s, counts)  # each stratum spread evenly
    assert make_folds(strata, 5, seed=3) == folds and make_folds(strata, 5, seed=4) != folds


def test_folds_csv_reads_back_as_a_survival_manifest_with_the_same_folds(tmp_path):
    m = _write(tmp_path, "path,OS.time,OS\n" + "".join(f"s{i}.svs,{i + 1},{i % 3 == 0:d}\n" for i in range(9)))
    rows = read_cohort(m, task="survival").rows
    folds = make_folds(strata_of(rows, "survival"), 3)
    back = read_cohort(write_folds(tmp_path, rows, folds), task="survival").rows
    assert [(r.path, r.time, r.event, r.fold) for r in back] == [(r.path, r.time, r.event, f)
                                                                 for r, f in zip(rows, folds)]
    test_sets = [{r.path for r in assign_fold("f", back, k) if r.split == "test"} for k in range(3)]
    assert set.union(*test_sets) == {r.path for r in rows}
    assert sum(len(s) for s in test_sets) == len(rows)  # disjoint
