"""`ats-wsi predict` on dask.distributed gives the in-process results, byte for byte:
`--workers 2` (a local cluster of 2 worker processes) and `--scheduler ADDRESS`
(a scheduler and a worker started with the `dask` command line, as on a cluster)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import PREDICT_ARGS, assert_same_results, cli, explain, temporaries

pytest.importorskip("distributed")

DASK = [sys.executable, "-m", "distributed.cli.dask_scheduler"], [sys.executable, "-m", "distributed.cli.dask_worker"]


def test_two_local_workers_equal_the_in_process_run(reference, checkpoint, predict_input, tmp_path):
    out = tmp_path / "results"
    proc = cli("predict", checkpoint, predict_input.folder, "--out", out, "--workers", "2", *PREDICT_ARGS)
    assert proc.returncode == 1, explain(proc)  # the two bad slides fail on the workers too
    assert temporaries(out) == []
    assert_same_results(out, reference.out)


def _start(cmd, cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def scheduler_and_worker(tmp_path):
    """A `dask scheduler` on localhost and one `dask worker` (1 process, 1 thread) whose
    working directory is its own, as on another node; yields the scheduler's address."""
    node = tmp_path / "node"
    node.mkdir()
    info = tmp_path / "scheduler.json"
    scheduler = _start([*DASK[0], "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                        "--scheduler-file", str(info)], node, tmp_path / "scheduler.log")
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not info.is_file() and time.monotonic() < deadline and scheduler.poll() is None:
            time.sleep(0.1)
        assert info.is_file(), (tmp_path / "scheduler.log").read_text()
        worker = _start([*DASK[1], "--scheduler-file", str(info), "--nworkers", "1", "--nthreads", "1",
                         "--no-dashboard", "--local-directory", str(node)], node, tmp_path / "worker.log")
        yield json.loads(info.read_text())["address"]
    finally:
        if worker is not None:
            _stop(worker)
        _stop(scheduler)


def test_an_external_scheduler_equals_the_in_process_run_with_relative_paths(
        scheduler_and_worker, reference, checkpoint, predict_input, tmp_path):
    # Paths relative to where the command runs; the worker runs elsewhere.
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731
    proc = cli("predict", rel(checkpoint), rel(predict_input.folder), "--out", "results",
               "--scheduler", scheduler_and_worker, *PREDICT_ARGS, cwd=tmp_path)
    assert proc.returncode == 1, explain(proc)
    out = tmp_path / "results"
    assert temporaries(out) == []
    assert_same_results(out, reference.out)
    assert not (tmp_path / "node" / "results").exists()
