"""README command one: `ats-wsi demo` end to end, through its real entry point."""
import re
import subprocess
import sys
from pathlib import Path


def _value(report: str, label: str) -> float:
    match = re.search(rf"^{label}\s+([0-9.]+)%", report, flags=re.M)
    assert match, f"{label!r} missing from the report:\n{report}"
    return float(match.group(1)) / 100


def test_demo_learns_and_its_attention_finds_the_lesions(tmp_path):
    exe = Path(sys.executable).with_name("ats-wsi")
    out = subprocess.run([str(exe), "demo", "--out", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = out.stdout
    assert _value(report, "held-out accuracy") >= 0.9
    # the top attention cell of most positive slides lies on the lesion
    assert _value(report, "top attention on lesion") >= 0.75
    # far more sampled patches hit the lesion than its share of the tissue (~20 %)
    assert _value(report, "patches on a lesion") >= 0.4
    assert _value(report, "pixels read") < 0.05
    results = tmp_path / "demo" / "results"
    assert (results / "predictions.csv").is_file()
    assert len(list((results / "overlays").glob("*.png"))) == 12
    assert len(list((results / "maps").glob("*.zarr"))) == 12
