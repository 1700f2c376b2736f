"""A predict run killed mid-way (SIGKILL, or SIGINT as Ctrl-C sends), then run again,
ends equal to a run that was never interrupted, file for file, with no temporaries left."""
from __future__ import annotations

import signal
import time

import pytest
from cli_helpers import N_GOOD, PREDICT_ARGS, assert_same_results, cli, cli_popen, explain, temporaries


def _interrupt_after_first_slide(proc, out, sig) -> list[str]:
    """Poll for the first done marker, then send ``sig``; the names of the markers at that moment."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = sorted(p.name for p in (out / ".done").glob("*.json")) if (out / ".done").is_dir() else []
        if done:
            proc.send_signal(sig)
            return done
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before any slide was done")
        time.sleep(0.005)
    proc.kill()
    pytest.fail("no slide finished within 240 s")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(sig, reference, checkpoint, predict_input,
                                                                  tmp_path):
    out = tmp_path / "results"
    proc = cli_popen("predict", checkpoint, predict_input.folder, "--out", out, *PREDICT_ARGS,
                     out_dir=tmp_path / "log")
    _interrupt_after_first_slide(proc, out, sig)
    code = proc.wait(timeout=120)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 130, (tmp_path / "log" / "stderr.txt").read_text()
        assert "interrupted" in (tmp_path / "log" / "stderr.txt").read_text()
    finished = sorted(p.name for p in (out / ".done").glob("*.json"))
    assert 1 <= len(finished) < N_GOOD, f"not stopped mid-way: {finished}"
    stamps = {name: (out / ".done" / name).stat().st_mtime_ns for name in finished}

    again = cli("predict", checkpoint, predict_input.folder, "--out", out, *PREDICT_ARGS)
    assert again.returncode == 1, explain(again)  # the two bad slides still fail
    # The slides finished before the interruption were skipped, not redone.
    assert {name: (out / ".done" / name).stat().st_mtime_ns for name in finished} == stamps
    assert temporaries(out) == []
    assert_same_results(out, reference.out)
