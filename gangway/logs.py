"""structlog set-up: one JSON line per event on stdout (supervisord writes it to the service's log)."""
from __future__ import annotations

import logging
import sys

import structlog


def setup(service: str, level: str = "info"):
    """Configure structlog for ``service`` and return a bound logger."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger().bind(service=service)


class OnceLogger:
    """Logs the first occurrence of each kind of problem, counts all of them."""

    def __init__(self, log, counters: dict):
        self.log = log
        self.counters = counters
        self._seen: set = set()

    def drop(self, reason: str, **kw) -> None:
        key = "drop." + reason
        self.counters[key] = self.counters.get(key, 0) + 1
        if reason not in self._seen:
            self._seen.add(reason)
            self.log.warning("dropped", reason=reason, first=True, **kw)
