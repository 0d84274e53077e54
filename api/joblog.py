"""Each job's log file: its controller thread's log records and its events, one line each."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipewave.service.control.job import Event


class _ThreadFilter(logging.Filter):
    def __init__(self, thread_name: str) -> None:
        super().__init__()
        self.thread_name = thread_name

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName == self.thread_name


def open_job_log(path: Path, thread_name: str) -> logging.FileHandler:
    """A handler on the root logger writing the log records (INFO and up) of the thread named
    ``thread_name`` to ``path``; ``close_job_log`` removes it."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.addFilter(_ThreadFilter(thread_name))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def close_job_log(handler: logging.FileHandler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()


def log_event(handler: logging.FileHandler, ev: Event) -> None:
    """One line for a controller event: its local time, kind and message."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev.time))
    if handler.stream is not None:
        handler.stream.write(f"{stamp} EVENT {ev.kind}: {ev.message}\n")
        handler.flush()
