"""Run each hostile case in a child process with a time and a memory limit.

Children are forked from the runner after it imported numpy, tifffile,
torch and ats_wsi once, so a case costs a fork, not an interpreter start;
``jobs`` children run at once. Each child sets ``RLIMIT_AS`` to its
address space at start plus ``memory_bytes``, runs the case's action and
sends back its outcome (see :mod:`hostile_cases`); the parent kills it after
``timeout`` seconds (``hang``) and calls a child that died without an answer
a ``crash``.

As a script it builds the cases in a temporary folder, runs them all and
prints the counts table (and every case that is not as expected)::

    python tests/hostile/hostile_runner.py [--jobs 2] [--timeout 20]

``PYTHONPATH=/other/checkout`` runs the same cases against another ats_wsi.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import resource
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hostile_cases  # noqa: E402

OUTCOMES = ("typed", "correct", "raw", "hang", "crash", "garbage", "leak")
PRELOAD = ["numpy", "tifffile", "torch", "ats_wsi.slide", "ats_wsi.patches", "ats_wsi.sampling",
           "ats_wsi.model", "ats_wsi.classifier", "hostile_cases"]


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _child(conn, name: str, root: str, memory_bytes: int) -> None:
    limit = _address_space() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    case = hostile_cases.CASES[name]
    try:
        answer = case.action(os.path.join(root, case.file))
    except BaseException as exc:  # noqa: BLE001 - classified, not handled
        from ats_wsi.errors import AtsError

        message = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, AtsError):
            outcome = "leak" if hostile_cases.leaked(str(exc)) else "typed"
        else:
            outcome = "raw"
            message += "\n" + "".join(traceback.format_exc(limit=-3))
        conn.send((outcome, message[:2000]))
        return
    outcome = {True: "correct", False: "garbage", "hang": "hang"}.get(answer, "garbage")
    conn.send((outcome, repr(answer)[:200]))
    conn.close()


class _Running:
    """One case's child, its pipe and its deadline."""

    def __init__(self, ctx, name: str, root: str, timeout: float, memory_bytes: int):
        self.name = name
        self.recv, send = ctx.Pipe(duplex=False)
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.timeout = timeout
        self.child = ctx.Process(target=_child, args=(send, name, root, memory_bytes))
        self.child.start()
        send.close()

    def finish(self) -> tuple[str, str, float]:
        """(outcome, detail, seconds), once the pipe is readable or the deadline passed."""
        try:
            if self.recv.poll(0):
                try:
                    outcome, detail = self.recv.recv()
                except EOFError:
                    self.child.join()
                    return "crash", f"exit code {self.child.exitcode}", self.seconds
                return outcome, detail, self.seconds
            return "hang", f"no answer after {self.timeout:.0f} s", self.seconds
        finally:
            self.child.join(2)
            if self.child.is_alive():
                self.child.kill()
                self.child.join()
            self.recv.close()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start


def run_all(root: str, names=None, *, jobs: int = 2, timeout: float = 20.0,
            memory_bytes: int = 3 << 30) -> dict[str, tuple[str, str, float]]:
    """Run the named cases (all by default) on files built under ``root``.

    The children are forked from this process (single-threaded here: the
    scheduler is a loop over pipes), after the modules the cases use are
    imported once, so a case costs a fork (tens of ms), not an interpreter.
    """
    import importlib

    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError:  # an older ats_wsi (PYTHONPATH) may lack a package: its cases fail as raw
            pass
    ctx = multiprocessing.get_context("fork")
    waiting = list(hostile_cases.CASES) if names is None else list(names)
    waiting.reverse()
    running: list[_Running] = []
    results = {}
    while waiting or running:
        while waiting and len(running) < jobs:
            running.append(_Running(ctx, waiting.pop(), root, timeout, memory_bytes))
        now = time.monotonic()
        wait = max(0.0, min(r.deadline for r in running) - now)
        ready = multiprocessing.connection.wait([r.recv for r in running], timeout=wait)
        for r in list(running):
            if r.recv in ready or time.monotonic() >= r.deadline:
                results[r.name] = r.finish()
                running.remove(r)
    return results


def counts(results: dict) -> dict[str, int]:
    out = dict.fromkeys(OUTCOMES, 0)
    for outcome, _, _ in results.values():
        out[outcome] += 1
    return out


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--memory-gib", type=float, default=3.0)
    parser.add_argument("--root", help="cases already built here (default: build them in a temporary folder)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    import ats_wsi

    start = time.monotonic()
    memory = int(args.memory_gib * 2**30)
    if args.root:
        results = run_all(args.root, jobs=args.jobs, timeout=args.timeout, memory_bytes=memory)
    else:
        with tempfile.TemporaryDirectory(prefix="ats-hostile-") as root:
            hostile_cases.build_all(root)
            results = run_all(root, jobs=args.jobs, timeout=args.timeout, memory_bytes=memory)
    took = time.monotonic() - start
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(results, f)
    n = counts(results)
    print(f"ats_wsi from {os.path.dirname(ats_wsi.__file__)}: {len(results)} cases in {took:.0f} s")
    print("| " + " | ".join(OUTCOMES) + " |")
    print("|" + "---:|" * len(OUTCOMES))
    print("| " + " | ".join(str(n[o]) for o in OUTCOMES) + " |")
    bad = {k: v for k, v in results.items() if v[0] not in hostile_cases.CASES[k].expect}
    for name, (outcome, detail, secs) in sorted(bad.items()):
        print(f"  {outcome:8s} {name}  ({secs:.1f} s) {detail.splitlines()[0][:150] if detail else ''}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
