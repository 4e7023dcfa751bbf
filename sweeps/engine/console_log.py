"""One line per event on the console; the tracebacks Ray and Tune log go to the sweep's log file.

Tune logs a failed trial (a diverging one, a worker killed, a checkpoint gone) with the whole remote traceback, 60
lines a time, on the driver's console. While a sweep runs, the console handlers of Ray's loggers print such a
record as one line, ending in the innermost error's own message and where the traceback is; a file handler writes
every record, traceback and all, to `<results>/<sweep>/driver.log`.
"""

from __future__ import annotations

import copy
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_FILE = "driver.log"
# Tune's and Train's loggers propagate to Ray's, which owns the console handler; MLflow's store logs its own
LOGGERS = ("ray", "mlflow")


class QuietFileHandler(logging.FileHandler):
    """The log file may sit on the disk that just ran full: a failed write is dropped, not printed with a traceback."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class OneLineFormatter(logging.Formatter):
    """Formats a record as its own formatter would, with any traceback cut to the innermost error's first line."""

    def __init__(self, inner: logging.Formatter | None, log_file: Path) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()
        self.log_file = log_file

    def format(self, record: logging.LogRecord) -> str:
        if not record.exc_info and "\nTraceback (most recent call last)" not in str(record.msg):
            return self.inner.format(record)
        short = copy.copy(record)
        message = record.getMessage().split("\nTraceback (most recent call last)")[0].strip()
        cause = innermost_error(record.exc_info[1]) if record.exc_info else ""
        short.msg = f"{message}{': ' + cause if cause else ''} (traceback in {self.log_file})"
        short.args, short.exc_info, short.exc_text, short.stack_info = None, None, None, None
        return self.inner.format(short)


def innermost_error(error: BaseException | None) -> str:
    """`Type: first line of the message` of the error at the root of `error` (a Ray task error's own cause)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None) or error.__cause__
        if not isinstance(cause, BaseException):
            break
        error = cause
    if error is None:
        return ""
    line = traceback.format_exception_only(type(error), error)[-1].strip()
    return line.splitlines()[0][:300]


@contextmanager
def tracebacks_to_log(sweep_dir: Path) -> Iterator[None]:
    """While a sweep runs: tracebacks of Ray's and Tune's log records to `sweep_dir/driver.log`, one line on screen."""
    log_file = sweep_dir / LOG_FILE
    file_handler = QuietFileHandler(log_file, encoding="utf-8", delay=True)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    file_handler.setLevel(logging.INFO)
    swapped: list[tuple[logging.Handler, logging.Formatter | None]] = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                swapped.append((handler, handler.formatter))
                handler.setFormatter(OneLineFormatter(handler.formatter, log_file))
        logger.addHandler(file_handler)
    try:
        yield
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(file_handler)
        for handler, formatter in swapped:
            handler.setFormatter(formatter)  # type: ignore[arg-type]
        file_handler.close()
