"""What every sub-command shares: argument types, tables, progress bars, the device check."""
from __future__ import annotations

import argparse
import os
import sys


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each option's default and keeps descriptions as written.

    An option whose default is None (a flag that is off, or one whose default
    comes from elsewhere and says so in its help) shows none.
    """

    def _get_help_string(self, action):
        if action.default is None or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def int_in(low: int, high: int):
    """argparse type: an int in ``low..high`` (a count that sizes work or memory is bounded)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        return value
    return parse


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (so that a bad value is a usage error, not a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """Rows as left-aligned columns under a header and a rule."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r):
        return "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, *, leave: bool = True):
    """A tqdm bar on stderr when it is a terminal (None when disabled).

    ``disable=None``: no bar when stderr is not a terminal (logs, CI).
    """
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=None, **bar_width())


def transient_bars(enabled: bool = True):
    """The ``progress`` callback of run/ functions (:mod:`ats_wsi.run._progress`): tqdm bars
    that vanish when done (one per epoch, one for the slide checks); None when disabled."""
    if not enabled:
        return None
    return lambda total, desc, unit: progress_bar(total, desc, unit, leave=False)


def bar_width() -> dict:
    """tqdm's width arguments: follow the terminal, or 100 columns where the terminal
    reports none (``script``, a ``docker -t`` pseudo-terminal: tqdm would draw an empty bar)."""
    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = 0
    return {"dynamic_ncols": True} if columns > 0 else {"ncols": 100, "nrows": 24}


def check_device(command: str, device: str) -> str | None:
    """An error line if ``device`` cannot be used by this torch, else None."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        return f"ats-wsi {command}: --device {device!r} is not a torch device ({exc})"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return (f"ats-wsi {command}: --device {device} asked for, but this torch ({torch.__version__}) "
                f"has no usable CUDA device; use --device cpu or install a CUDA build of torch")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        return f"ats-wsi {command}: --device mps asked for, but MPS is not available here"
    return None


def classes(text: str):
    """argparse type of ``--classes``: a number of classes (``3``) or their names (``normal,tumor``)."""
    text = text.strip()
    if text.isdigit():
        value = int(text)
        if value < 2:
            raise argparse.ArgumentTypeError(f"a classifier needs >= 2 classes, got {value}")
        return value
    names = [n.strip() for n in text.split(",")]
    if len(names) < 2 or not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number of classes nor >= 2 comma-separated names")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a class twice")
    return names


def floats(n: int):
    """argparse type: ``n`` comma-separated numbers (``0.5,0.5,0.5``)."""
    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) != n:
            raise argparse.ArgumentTypeError(f"{text!r} is not {n} comma-separated numbers")
        return values
    return parse


def json_object(text: str) -> dict:
    """argparse type: a JSON object (``'{"hidden": 8}'``)."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object {{...}}")
    return value


class LibraryLog:
    """Library warnings (tifffile's log, Python warnings, ats_wsi's own) go to ``path``, not
    the terminal where progress bars are drawn. The file is made on the first record.

    Use as a context manager; ``count`` is the number of records written.
    """

    LOGGERS = ("tifffile", "ats_wsi", "py.warnings", "zarr", "numcodecs", "distributed")

    def __init__(self, path):
        import logging
        from pathlib import Path

        self.path, self.count = Path(path), 0
        self._saved: list = []  # (logger, propagate, level) of each logger taken over in __enter__
        outer = self

        class _Handler(logging.Handler):
            def emit(self, record):
                try:
                    outer.path.parent.mkdir(parents=True, exist_ok=True)
                    with open(outer.path, "a", encoding="utf-8") as fh:
                        fh.write(f"{record.levelname.lower()} {record.name}: {record.getMessage()}\n")
                    outer.count += 1
                except OSError:
                    pass

        self.handler = _Handler(logging.INFO)

    def __enter__(self):
        import logging

        logging.captureWarnings(True)
        self._saved = []
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.propagate, logger.level))
            logger.addHandler(self.handler)
            logger.propagate = False
            if name.startswith("ats_wsi") and logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        import logging

        for logger, propagate, level in self._saved:
            logger.removeHandler(self.handler)
            logger.propagate, logger.level = propagate, level
        logging.captureWarnings(False)

    def summary(self, command: str) -> str | None:
        """A line for stderr when anything was logged."""
        if not self.count:
            return None
        return f"ats-wsi {command}: {self.count} warning(s) logged to {self.path}"


def error(message: str) -> int:
    """Print ``message`` to stderr; the exit status of a usage error (2)."""
    print(message, file=sys.stderr)
    return 2


def read_model_config(path) -> dict:
    """The model keys of a ``--config`` JSON file: a ModelConfig dict, or a run's ``config.json`` (its
    ``model``); ConfigError naming the file when it is no JSON object."""
    import json
    from pathlib import Path

    from ..errors import ConfigError

    try:
        base = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(path, f"cannot read it as JSON ({exc})") from None
    if isinstance(base, dict) and isinstance(base.get("model"), dict):  # a run's config.json
        base = base["model"]
    if not isinstance(base, dict):
        raise ConfigError(path, f"a model config must be a JSON object, got {type(base).__name__}")
    return base
