"""The daemon's log formats (``pymigrate daemon --log-format text|json``).

``text`` is the classic ``TIME LEVEL LOGGER: MESSAGE`` line. ``json`` writes one JSON object per
line for log shippers: ``ts`` (RFC 3339, UTC, milliseconds), ``level`` (lower case), ``logger``,
``msg`` (the formatted message), every field passed with ``extra=`` (the access log's ``peer``,
``method``, ``code``, ``ms``; migrate/remote/access_log.py), and ``exc`` with the traceback when
there is one. Configured by the daemon only; the library just logs.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# attributes every LogRecord has: anything else on a record came from ``extra=``
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        # default=str: an extra field that JSON cannot carry (a Path, an enum) is written as text
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(log_format: str = "text", *, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """The root logger writes ``log_format`` lines to ``stream`` (stderr) from ``level`` up."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(force=True, level=level, handlers=[handler])
