"""run/_log_capture.py: library warnings kept per slide while slides open in threads, never printed."""
from __future__ import annotations

import logging
import threading

from ats_wsi.run._log_capture import capture_warnings


def test_warnings_are_kept_by_the_slide_each_thread_is_on_and_the_logger_is_restored(capsys):
    logger = logging.getLogger("tifffile")
    before = (logger.propagate, list(logger.handlers))
    barrier = threading.Barrier(2)

    def one(name, warnings):
        warnings.on(name)
        barrier.wait()  # both threads are inside at once: records must not cross
        logger.warning("bad tag in %s", name)
        logger.info("not a warning")
        warnings.on(None)
        logger.warning("after the slide")  # no slide: dropped

    with capture_warnings() as warnings:
        threads = [threading.Thread(target=one, args=(n, warnings)) for n in ("a.svs", "b.svs")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        logger.warning("main thread, no slide")
    assert warnings.records == {"a.svs": ["bad tag in a.svs"], "b.svs": ["bad tag in b.svs"]}
    assert (logger.propagate, list(logger.handlers)) == before
    assert capsys.readouterr().err == ""
