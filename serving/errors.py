"""The one error type the service answers with: ``{"error": message}`` (one line, at most
``MAX_MESSAGE`` characters) and an HTTP status."""

from __future__ import annotations

from http import HTTPStatus

MAX_MESSAGE = 300  # characters


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """`message` on one line, at most `limit` characters (a caller's input inside a message is
    never echoed whole)."""
    line = " ".join(str(message).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with `status`."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        message = bounded(message)
        super().__init__(message)
        self.status = status
        self.message = message
