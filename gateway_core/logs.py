"""Logging set-up, with a last line of defence against secrets in log lines."""

from __future__ import annotations

import logging
import re
import sys

import orjson

from gateway_core.config import LoggingConfig

_SECRET = re.compile(
    r"(?i)(bearer\s+|x-api-key[\"':=\s]+|api[_-]?key[\"':=\s]+)([A-Za-z0-9._\-]{8,})|\b(sk-[A-Za-z0-9_\-]{8,})"
)


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: (m.group(1) or "") + "[redacted]", text)


class RedactingFilter(logging.Filter):
    """Masks bearer tokens and API-key-looking strings in every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger and message; the fields of an access line
    (``extra={"fields": {...}}``) at the top level; the traceback of an error, masked like the message."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["traceback"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, then an access line's fields as ``name=value``; tracebacks
    masked like the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            text += "".join(f" {name}={value}" for name, value in fields.items() if value is not None)
        return redact(text) if record.exc_info else text


def configure_logging(config: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if config.json_lines else TextFormatter())
    for name in ("lockgate", "hypercorn.error", "hypercorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("lockgate").setLevel(config.level.upper())
