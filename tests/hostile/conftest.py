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
def hostile_results(hostile_root) -> dict:
    """``case name -> (outcome, detail, seconds)`` for every case."""
    return hostile_runner.run_all(hostile_root, jobs=2, timeout=CASE_TIMEOUT_S, memory_bytes=CASE_MEMORY_BYTES)
