"""README command one: `ats-wsi demo` end to end, through its real entry point."""
import re


def _value(report: str, label: str) -> float:
    match = re.search(rf"^{label}\s+([0-9.]+)%", report, flags=re.M)
    assert match, f"{label!r} missing from the report:\n{report}"
    return float(match.group(1)) / 100


def test_demo_learns_and_its_attention_finds_the_lesions(demo_run):
    out_dir, report = demo_run
    assert _value(report, "held-out accuracy") >= 0.9
    # the top attention cell of most positive slides lies on the lesion
    assert _value(report, "top attention on lesion") >= 0.75
    # far more sampled patches hit the lesion than its share of the tissue (~20 %)
    assert _value(report, "patches on a lesion") >= 0.4
    assert _value(report, "pixels read") < 0.05
    results = out_dir / "results"
    assert (results / "predictions.csv").is_file()
    assert len(list((results / "overlays").glob("*.png"))) == 12
    assert len(list((results / "maps").glob("*.zarr"))) == 12
