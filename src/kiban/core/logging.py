"""structlog: JSON lines in production, readable lines in development; request_id on every line.

Lines are rendered and written by a listener thread (``QueueHandler`` → ``QueueListener``): the
event loop only builds the event dict and enqueues it, so a slow or full stderr (a pipe to a log
shipper) never holds up a request, and the JSON rendering leaves the request's path. Lines still
queued when the process is killed with SIGKILL are lost: logs are not the record of a request,
the usage ledger is.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
import time
from datetime import UTC, datetime
from typing import Any

import structlog

from kiban.core.context import request_id_var


def _add_request_id(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    request_id = request_id_var.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def _stamp(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """The moment the event was logged (its record's), though it is rendered later."""
    record = event.get("_record")
    moment = record.created if record is not None else time.time()
    stamp = datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")
    event.setdefault("timestamp", stamp)
    return event


def configure_logging(*, json: bool, level: str = "INFO") -> None:
    """Configure structlog and route stdlib logging (uvicorn, sqlalchemy) through it.

    On the event loop an event is only filtered by level and given the request's context; its
    level, logger name and timestamp (the record's) are added in the listener thread."""
    context: list[Any] = [structlog.contextvars.merge_contextvars, _add_request_id]
    labels: list[Any] = [structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, _stamp]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            # Without locals: rendering every frame's locals (the whole app object among them)
            # took seconds of CPU per traceback and stalled a loaded server.
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False),
        )
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *context,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=context,
            processors=[
                *labels,
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if json else lambda _l, _m, e: e,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [_start_listener(handler)]
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))
    # uvicorn's access log is replaced by our own one-line-per-request log.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class _PassThroughQueueHandler(logging.handlers.QueueHandler):
    """Enqueue the record as it is: the stock ``prepare`` formats it in the caller's thread,
    which is the work this handler exists to move off the event loop."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_listener: logging.handlers.QueueListener | None = None


def _start_listener(handler: logging.Handler) -> logging.Handler:
    """A handler that hands records to a new listener thread writing to ``handler``."""
    global _listener
    stop_listener()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, handler, respect_handler_level=True)
    _listener.start()
    return _PassThroughQueueHandler(records)


def stop_listener() -> None:
    """Write out every queued line and stop the listener thread (at exit, or on reconfigure)."""
    global _listener
    listener, _listener = _listener, None
    if listener is not None:
        listener.stop()


atexit.register(stop_listener)
