"""Log wiring: a user mistake found inside a flow is one readable line, not a traceback.

Prefect logs every failed task and flow run with its traceback. For a ``LandslideError`` (bad input:
a layer with no data in the ROI, a truncated file) the message already says what is wrong and what
to do, and the CLI prints it as its one ``error:`` line; the traceback only buries it. The filter
drops the traceback of those records and keeps everything else (bugs keep their tracebacks).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from tasks.core.errors import LandslideError


class NoTracebackForUserErrors(logging.Filter):
    """Strip ``exc_info`` from records whose exception is a ``LandslideError``."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, LandslideError):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_user_error_tracebacks() -> None:
    """Add the filter to the handlers of the root logger and of Prefect's loggers (idempotent);
    call it after Prefect has configured logging (importing a flow module does)."""
    loggers = [logging.getLogger()] + [
        logger for name, logger in logging.Logger.manager.loggerDict.items()
        if name.startswith("prefect") and isinstance(logger, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, NoTracebackForUserErrors) for f in handler.filters):
                handler.addFilter(NoTracebackForUserErrors())


_STDERR_FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s"


class _CurrentStderr(logging.StreamHandler):
    """A StreamHandler writing to whatever ``sys.stderr`` is when a record comes (it may have been
    replaced since the handler was made: a test's capture, a redirect)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the property decides
        pass


@contextlib.contextmanager
def log_to_stderr(level: int = logging.INFO) -> Iterator[None]:
    """While the block runs, log the pipeline's own loggers (``tasks``, ``models``, ``landslide``)
    to stderr the way a Prefect run shows them: for scans that run in-process without Prefect. The
    loggers are left as they were afterwards."""
    saved = []
    for name in ("tasks", "models", "landslide"):
        logger = logging.getLogger(name)
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter(_STDERR_FORMAT, datefmt="%H:%M:%S"))
        handler.addFilter(NoTracebackForUserErrors())
        saved.append((logger, logger.level, handler))
        logger.setLevel(level)
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger, old_level, handler in saved:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
