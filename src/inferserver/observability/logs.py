"""Log set-up: plain text lines, or one JSON object per line (LOG_FORMAT=json) that carries the session id."""

from __future__ import annotations

import contextvars
import json
import logging
import re
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The session a request is about (set by the request log middleware for paths that name one).
current_session: contextvars.ContextVar[str | None] = contextvars.ContextVar("inferserver_session", default=None)
# Session ids are random UUIDs, and every session-manager line names its session: finding it in the message
# gives those lines a session_id field without threading it through every log call.
SESSION_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_STANDARD = {*vars(logging.LogRecord("", 0, "", 0, "", None, None)), "message", "asctime", "taskName", "color_message"}


# C0 and C1 controls (newline, carriage return, ESC of terminal sequences), Unicode line breaks, and the
# backslash that introduces the escapes: what a client could use to forge or hide lines in a text log.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return "\\\\" if code == 0x5C else f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` for a log line: every control character written as an escape (a newline as `\\x0a`), so a
    request path can never start a line of its own or move a terminal's cursor."""
    return _UNPRINTABLE.sub(_escape, text)


def session_id_of(record: logging.LogRecord) -> str | None:
    explicit = getattr(record, "session_id", None) or current_session.get()
    if explicit:
        return explicit
    found = SESSION_ID.search(record.getMessage())
    return found.group(0) if found else None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (session_id := session_id_of(record)) is not None:
            entry["session_id"] = session_id
        # Structured fields passed with `extra=` (the request log's method, path, status, duration).
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and k not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(log_format: str = "text", level: str | int = "INFO") -> None:
    """Replace the root logger's handlers with one on stderr in the asked format."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
