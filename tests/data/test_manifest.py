"""Slide manifests as people write them: CSV or TSV, any header case, the usual column
names, string or index labels, split names; every bad row named with its line."""
from __future__ import annotations

from pathlib import Path

import pytest

from ats_wsi.data.manifest import ManifestRow, is_manifest, read_cohort, read_manifest
from ats_wsi.errors import ManifestError


def _write(tmp_path, text, name="m.csv", encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def test_relative_paths_are_taken_from_the_manifest_folder_and_splits_filter(tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = _write(tmp_path, "path,label,split\na.svs,0,train\n/abs/b.svs,1,val\nc.svs,1,\n", "sub/m.csv")
    rows = read_manifest(manifest)
    assert rows == [ManifestRow((tmp_path / "sub" / "a.svs").resolve(), 0, "train"),
                    ManifestRow(Path("/abs/b.svs"), 1, "val"),
                    ManifestRow((tmp_path / "sub" / "c.svs").resolve(), 1, "train")]  # empty split: train
    assert [r.line for r in rows] == [2, 3, 4]
    assert [r.label for r in read_manifest(manifest, "train")] == [0, 1]
    assert [r.label for r in read_manifest(manifest, "val")] == [1]
    assert [r.label for r in read_manifest(manifest, "validation")] == [1]
    assert read_manifest(manifest, "test") == []


def test_a_manifest_without_split_column_is_all_train(tmp_path):
    manifest = _write(tmp_path, "label,path\n1,x.svs\n")
    assert read_manifest(manifest, "train") == [ManifestRow((tmp_path / "x.svs").resolve(), 1, "train")]


def test_a_spreadsheet_csv_with_a_byte_order_mark_and_crlf_reads(tmp_path):
    manifest = _write(tmp_path, "Path,Label\r\nx.svs,0\r\n,,\r\n", encoding="utf-8-sig")
    assert [r.label for r in read_manifest(manifest)] == [0]  # the empty ",," row is skipped


@pytest.mark.parametrize("header", ["Path,Label,Split", "PATH,TARGET,FOLD", "slide,class,set", "File Name,Label,Split",
                                    "filename,diagnosis,subset", "slide_path,label,split"])
def test_usual_header_names_in_any_case(tmp_path, header):
    manifest = _write(tmp_path, f"{header}\n/s/a.svs,1,Validation\n/s/b.svs,0,TEST\n/s/c.svs,0,dev\n")
    rows = read_manifest(manifest)
    assert [(str(r.path), r.label, r.split) for r in rows] == [("/s/a.svs", 1, "val"), ("/s/b.svs", 0, "test"),
                                                               ("/s/c.svs", 0, "val")]


def test_tsv_by_suffix_and_by_header(tmp_path):
    text = "slide_id\tpath\tlabel\tsplit\tmpp\nS1\t/s/a.svs\ttumor\tvalid\t0.25\nS2\t/s/b.svs\tnormal\ttrain\t\n"
    for name in ("m.tsv", "m.csv"):
        cohort = read_cohort(_write(tmp_path, text, name))
        assert cohort.class_names == ["normal", "tumor"]
        assert cohort.rows == [
            ManifestRow(Path("/s/a.svs"), 1, "val", "S1", 0.25, "tumor"),
            ManifestRow(Path("/s/b.svs"), 0, "train", "S2", None, "normal"),
        ]


def test_string_labels_are_numbered_sorted_or_in_the_order_given(tmp_path):
    manifest = _write(tmp_path, "path,label\na,tumor\nb,normal\nc,stroma\nd,tumor\n")
    assert [r.label for r in read_manifest(manifest)] == [2, 0, 1, 2]
    cohort = read_cohort(manifest, classes=["tumor", "stroma", "normal"])
    assert cohort.class_names == ["tumor", "stroma", "normal"]
    assert [r.label for r in cohort.rows] == [0, 2, 1, 0]
    assert [r.class_name for r in cohort.rows] == ["tumor", "normal", "stroma", "tumor"]
    with pytest.raises(ManifestError, match=r"m.csv:3: label 'normal' is not one of the classes \['tumor', 'stroma'\]"):
        read_cohort(manifest, classes=["tumor", "stroma"])


def test_index_labels_written_as_floats_and_with_class_names(tmp_path):
    manifest = _write(tmp_path, "path,label\na,1.0\nb,0\nc,2\n")
    cohort = read_cohort(manifest)
    assert [r.label for r in cohort.rows] == [1, 0, 2] and cohort.class_names is None
    # Names given (a checkpoint's): index labels index them ...
    cohort = read_cohort(manifest, classes=["a", "b", "c"])
    assert [r.label for r in cohort.rows] == [1, 0, 2] and cohort.class_names == ["a", "b", "c"]
    # ... unless the labels are the names themselves.
    cohort = read_cohort(manifest, classes=["2", "1.0", "0"])
    assert [r.label for r in cohort.rows] == [1, 2, 0]
    with pytest.raises(ManifestError, match=r"m.csv:4: label '2' is not a class index of the 2 classes"):
        read_cohort(manifest, classes=["a", "b"])


def test_prediction_manifests_may_have_no_labels(tmp_path):
    manifest = _write(tmp_path, "path\na.svs\n")
    assert read_manifest(manifest, require_labels=False)[0].label is None
    manifest = _write(tmp_path, "path,label\na.svs,\nb.svs,1\n")
    assert [r.label for r in read_manifest(manifest, require_labels=False)] == [None, 1]
    with pytest.raises(ManifestError, match="m.csv:2: empty label"):
        read_manifest(manifest)


@pytest.mark.parametrize("text, message", [
    ("path,split\nx.svs,train\n", "missing column(s) ['label']"),
    ("slide_id,label\nx,0\n", "missing column(s) ['path']"),
    ("", "missing column(s) ['path', 'label']"),
    ("path,label\nx.svs,0\n,1\n", "m.csv:3: empty path"),
    ("path,label\nx.svs,-1\n", "m.csv:2: label '-1' is not a class index (0, 1, ...) or a class name"),
    ("path,label\nx.svs,1.5\n", "m.csv:2: label '1.5' is not a class index"),
    ("path,label,split\nx.svs,0,train\ny.svs,1,holdout\n", "m.csv:3: split 'holdout' is not train, val"),
    # a fold number (3) is a fold now (tests/data/test_outcome_manifest.py); a name that is neither is refused
    ("path,label,fold\nx.svs,0,3a\n", "m.csv:2: split '3a' is not train, val (validation, valid, dev) or test"),
    ("path,label,mpp\nx.svs,0,-0.5\n", "m.csv:2: mpp '-0.5' is not a positive number"),
])
def test_bad_manifests_raise_manifest_error_naming_file_and_line(tmp_path, text, message):
    manifest = _write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    assert message in str(info.value)
    assert str(manifest) in str(info.value)


def test_every_bad_row_is_named_in_one_error(tmp_path):
    manifest = _write(tmp_path, "path,label,split\na,0,train\n,1,train\nc,x,validation\nd,1,final\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    text = str(info.value)
    assert "2 bad row(s)" in text
    assert "m.csv:3: empty path" in text and "m.csv:5: split 'final'" in text


def test_a_missing_or_binary_manifest_raises_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest file"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "b.csv").write_bytes(b"\xff\xfe\x00path")
    with pytest.raises(ManifestError, match="not UTF-8 text"):
        read_manifest(tmp_path / "b.csv")


def test_is_manifest_by_suffix_or_header(tmp_path):
    assert is_manifest(_write(tmp_path, "x", "a.CSV")) and is_manifest(_write(tmp_path, "x", "a.tsv"))
    assert is_manifest(_write(tmp_path, "Slide,Label\n", "a.txt"))
    assert not is_manifest(_write(tmp_path, "hello\n", "b.txt"))
    assert not is_manifest(_write(tmp_path, "x", "a.svs")) and not is_manifest(tmp_path / "none.csv")


# ------------------------------------------------------------------ messy manifests (issues 25 and 26)


def test_label_case_and_spacing_make_one_class_named_by_its_most_frequent_spelling(tmp_path):
    manifest = _write(tmp_path, "Slide ID,Slide Path,Diagnosis,Split\n"
                                "S1,a.svs,normal,Train\nS2,b.svs,Normal ,Validation\nS3,c.svs,normal,Test\n"
                                "S4,d.svs,TUMOR,Train\nS5,e.svs, tumor,Train\nS6,f.svs,tumor,Test\n")
    cohort = read_cohort(manifest)
    assert cohort.class_names == ["normal", "tumor"]
    assert [r.label for r in cohort.rows] == [0, 0, 0, 1, 1, 1]
    assert [r.class_name for r in cohort.rows] == ["normal"] * 3 + ["tumor"] * 3
    assert [r.slide_id for r in cohort.rows] == ["S1", "S2", "S3", "S4", "S5", "S6"]
    assert [r.split for r in cohort.rows] == ["train", "val", "test", "train", "train", "test"]
    # classes given: matched the same way
    cohort = read_cohort(manifest, classes=["Tumor", "Normal"])
    assert [r.label for r in cohort.rows] == [1, 1, 1, 0, 0, 0]


def test_a_label_one_edit_from_another_class_is_refused_as_a_typo_with_its_rows(tmp_path):
    manifest = _write(tmp_path, "path,label\na,tumor\nb,normal\nc,Tumour\nd,tumor\ne,nromal\nf,normal\n")
    with pytest.raises(ManifestError) as info:
        read_cohort(manifest)
    text = str(info.value)
    assert "2 bad row(s)" in text
    assert "label 'Tumour' (1 row(s), line(s) 4) looks like a typo of 'tumor' (2 row(s))" in text
    assert "label 'nromal' (1 row(s), line(s) 6) looks like a typo of 'normal' (2 row(s))" in text
    assert "--classes" in text
    # naming every class accepts them as classes
    cohort = read_cohort(manifest, classes=["normal", "nromal", "tumor", "tumour"])
    assert [r.label for r in cohort.rows] == [2, 0, 3, 2, 1, 0]
    # with the two real classes named, the typo is an unknown class, with a hint
    with pytest.raises(ManifestError, match=r"m.csv:4: label 'Tumour' is not one of the classes "
                                            r"\['normal', 'tumor'\]; did you mean 'tumor'\?"):
        read_cohort(manifest, classes=["normal", "tumor"])


@pytest.mark.parametrize("labels", [("grade 1", "grade 2"), ("LUAD", "LUSC"), ("A", "B"), ("G1", "G2"),
                                    ("benign", "malignant")])
def test_classes_that_differ_in_digits_short_names_or_much_are_not_typos(tmp_path, labels):
    manifest = _write(tmp_path, "path,label\n" + "".join(f"s{i},{labels[i % 2]}\n" for i in range(4)))
    assert read_cohort(manifest).class_names == sorted(labels, key=str.casefold)


def test_a_nul_byte_or_a_huge_cell_is_a_manifest_error_naming_the_line(tmp_path):
    manifest = _write(tmp_path, "path,label\na.svs,0\nb\x00.svs,1\n")
    with pytest.raises(ManifestError, match=r"m.csv:3: the path holds a NUL byte"):
        read_cohort(manifest)
    manifest = _write(tmp_path, "path,label\na.svs,0\n" + "x" * 200_000 + ",1\n")
    with pytest.raises(ManifestError, match=r"m.csv:3: not a readable CSV row \(field larger than field limit"):
        read_cohort(manifest)
    manifest = _write(tmp_path, "path,label\n" + "y" * 5000 + ",1\n")
    with pytest.raises(ManifestError, match=r"m.csv:2: a path of 5000 characters, longer than any file system"):
        read_cohort(manifest)


def test_many_bad_rows_are_counted_and_the_first_twenty_listed(tmp_path):
    manifest = _write(tmp_path, "path,label,split\n" + "".join(f"s{i}.svs,0,holdout\n" for i in range(20_000)))
    with pytest.raises(ManifestError) as info:
        read_cohort(manifest)
    text = str(info.value)
    assert text.startswith(f"{manifest}: 20000 bad row(s):")
    assert "m.csv:21: split 'holdout'" in text and "m.csv:22:" not in text
    assert text.endswith("... and 19980 more") and len(text.splitlines()) == 22


def test_a_path_cell_keeps_its_spaces_only_when_that_names_the_file(tmp_path):
    (tmp_path / " lead space.svs").write_bytes(b"x")
    (tmp_path / "plain.svs").write_bytes(b"x")
    manifest = _write(tmp_path, "path,label\n lead space.svs,0\n plain.svs ,1\n gone.svs,1\n")
    assert [r.path for r in read_cohort(manifest).rows] == [
        tmp_path / " lead space.svs", tmp_path / "plain.svs", (tmp_path / "gone.svs").resolve()]
