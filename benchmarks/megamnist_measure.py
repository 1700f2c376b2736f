"""Cost per training sample of a Megapixel-MNIST method: seconds and peak memory, each in a fresh process.

Memory on CPU is read from ``/proc/self/status`` (``VmHWM`` after a reset
through ``/proc/self/clear_refs``), with ``ru_maxrss`` as the fallback
elsewhere; on CUDA from ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from megamnist_train import build_model, make_datasets


def measure_cost(method: str, cfg: dict) -> dict:
    """Seconds and peak memory per training sample (forward + backward) of one method.

    Each number comes from a fresh, spawned process, so that one method's
    allocations cannot hide or inflate the other's. The batch
    (``measure_batch`` full-resolution images) is rendered and resident
    before measuring, for both methods; one warm-up step runs first, so that
    kernels loaded on first use and first-call caches are not counted.

    - time: mean wall time of ``forward + loss + backward`` over
      ``measure_steps`` steps, divided by the batch size;
    - memory on CPU: peak resident set size (Linux ``VmHWM``, reset through
      ``/proc/self/clear_refs`` just before one forward + backward) minus the
      resident size just before it, divided by the batch size. In that
      process glibc hands every freed block over 128 KiB back to the system
      (``MALLOC_MMAP_THRESHOLD_``), so that the resident size follows live
      memory; this slows allocation down, hence the separate process for
      time. On CUDA: ``torch.cuda.max_memory_allocated`` minus the memory
      allocated before the step.
    """
    memory = _in_fresh_process(method, cfg, "memory",
                               {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"})
    timing = _in_fresh_process(method, cfg, "time", {})
    return {**memory, **timing, "measure_batch": cfg["measure_batch"]}


def _in_fresh_process(method: str, cfg: dict, what: str, env: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # a spawned child reads its environment at start-up
    try:
        proc = ctx.Process(target=_measure_in_child, args=(method, cfg, what, queue))
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result = queue.get(timeout=3600)
    proc.join()
    if "error" in result:
        raise RuntimeError(f"measuring the {what} of {method} failed: {result['error']}")
    return result


def _measure_in_child(method: str, cfg: dict, what: str, queue) -> None:
    try:
        queue.put(_measure(method, cfg, what))
    except BaseException as err:  # report to the parent instead of hanging it
        queue.put({"error": f"{type(err).__name__}: {err}"})


def _measure(method: str, cfg: dict, what: str) -> dict:
    """In a fresh process: ``{"seconds_per_sample"}`` or ``{"peak_memory_per_sample_mb", "memory_method"}``."""
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    device = torch.device(cfg["device"])
    model = build_model(method, cfg).to(device)
    train_ds, _ = make_datasets(cfg, cfg["measure_batch"])
    x = torch.stack([train_ds[i][0] for i in range(len(train_ds))]).to(device)
    y = torch.tensor([train_ds.layout(i).label for i in range(len(train_ds))], device=device)
    batch = len(x)

    def step():
        logits, reg, _ = model(x)
        (F.cross_entropy(logits, y) + reg).backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    if what == "time":
        times = []
        for _ in range(cfg["measure_steps"]):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        return {"seconds_per_sample": float(np.median(times)) / batch}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - before
        memory_method = "torch.cuda.max_memory_allocated delta"
    else:
        before, exact = _reset_peak_rss()
        step()
        peak = _peak_rss() - before
        memory_method = "peak RSS delta (VmHWM after clear_refs)" if exact else "peak RSS delta (ru_maxrss)"
    return {"peak_memory_per_sample_mb": max(peak, 0) / batch / 2**20, "memory_method": memory_method}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> tuple[int, bool]:
    """(resident bytes now, whether the peak was reset so that it starts from now)."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmRSS") * 1024, True
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _ru_unit(), False


def _peak_rss() -> int:
    try:
        return _status_kb("VmHWM") * 1024
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _ru_unit()


def _ru_unit() -> int:
    return 1 if sys.platform == "darwin" else 1024
