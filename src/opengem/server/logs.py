"""One log format for the API process, its access lines and its workers.

``plain``: ``2026-12-01 12:00:00,123 opengem.server INFO message`` (timestamps on
every line, access lines included); ``json``: one JSON object per line with the
same fields. Neither logs tokens nor bodies (the access line is method, path and
status, as uvicorn writes it; the path carries no key).
"""

from __future__ import annotations

import json
import logging
from typing import Any

FORMATS = ("plain", "json")
_PLAIN = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"


class JsonLines(logging.Formatter):
    """A log record as one JSON object: time, logger, pid, level, message."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record),
            "logger": record.name,
            "pid": record.process,
            "level": record.levelname,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _formatter(fmt: str) -> dict[str, Any]:
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "json":
        return {"()": f"{__name__}.JsonLines"}
    return {"format": _PLAIN}


def log_config(level: str, fmt: str = "plain") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for the root logger and uvicorn's loggers."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": _formatter(fmt)},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            name: {"handlers": ["default"], "level": level, "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure(level: str, fmt: str = "plain") -> None:
    """Configure this process's logging (API process or worker)."""
    import logging.config

    logging.config.dictConfig(log_config(level, fmt))
