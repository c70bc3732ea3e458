"""Progress messages on stderr, so stdout stays clean for results and --json."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings

VERBOSITY = 1  # 0 quiet, 1 normal, 2 verbose; set once by the CLI
_stream = None  # while native stderr is captured, our own messages go to a copy of the real stderr


def info(msg: str) -> None:
    if VERBOSITY >= 1:
        print(msg, file=_stream or sys.stderr, flush=True)


def debug(msg: str) -> None:
    if VERBOSITY >= 2:
        print(msg, file=_stream or sys.stderr, flush=True)


class step:
    """Context manager that prints "name ..." and then how long it took."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        info(f"  {self.name} ...")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            info(f"  {self.name}: done in {time.perf_counter() - self.t0:.1f} s")
        return False


@contextlib.contextmanager
def quiet_warnings():
    """Silence library warnings and log chatter (torch.onnx, transformers) unless -v was given."""
    if VERBOSITY >= 2:
        yield
        return
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch._dynamo", "transformers", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


@contextlib.contextmanager
def native_stderr_to_debug():
    """Capture what C++ code (TVM's logging) writes to fd 2; show it only with -v. Our own progress
    messages keep going to the real stderr."""
    import os
    import tempfile

    global _stream
    if VERBOSITY >= 2 or _stream is not None:
        yield
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr is not a real file (e.g. Click's test runner)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    _stream = os.fdopen(os.dup(saved), "w")
    with tempfile.TemporaryFile(mode="w+b") as buf:
        os.dup2(buf.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            _stream.close()
            _stream = None
