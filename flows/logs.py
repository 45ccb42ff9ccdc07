"""Log wiring: a user mistake found inside a flow is one readable line, not a traceback.

Prefect logs every failed task and flow run with its traceback. For a ``LandslideError`` (bad input:
a layer with no data in the ROI, a truncated file) the message already says what is wrong and what
to do, and the CLI prints it as its one ``error:`` line; the traceback only buries it. The filter
drops the traceback of those records and keeps everything else (bugs keep their tracebacks).
"""

from __future__ import annotations

import logging

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
