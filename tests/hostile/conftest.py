"""Fixtures of the hostile-input suite (issue 19): every case is built here,
with tifffile, numpy, bytes and JSON only (:func:`hostile_cases.build_all`),
and run once per session, each in its own child process with a time and a
memory limit (:mod:`hostile_runner`), two at a time."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import hostile_cases  # noqa: E402
import hostile_runner  # noqa: E402

CASE_TIMEOUT_S = 20.0
"""A child that has not answered after this long is a ``hang``."""

CASE_MEMORY_BYTES = 3 << 30
"""Address space a child may add to what it inherited (RLIMIT_AS)."""


@pytest.fixture(scope="session")
def hostile_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("hostile")
    hostile_cases.build_all(root)
    return str(root)


@pytest.fixture(scope="session")
def hostile_results(hostile_root, tmp_path_factory) -> dict:
    """``case name -> (outcome, detail, seconds)`` for every case.

    The cases are forked from a fresh runner process, not from this one:
    after other tests, pytest holds threads (torch's, PatchReaders') and
    locks a fork would inherit, which is the very fault some cases look for.
    """
    import json
    import subprocess

    out = tmp_path_factory.mktemp("hostile-results") / "results.json"
    subprocess.run([sys.executable, hostile_runner.__file__, "--root", hostile_root, "--json", str(out),
                    "--jobs", "2", "--timeout", str(CASE_TIMEOUT_S), "--memory-gib", str(CASE_MEMORY_BYTES / 2**30)],
                   check=False, timeout=600, capture_output=True)
    return {k: tuple(v) for k, v in json.loads(out.read_text()).items()}
