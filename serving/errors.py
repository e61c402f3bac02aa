"""The one error type the service answers with: ``{"error": message}`` (one line, at most
``MAX_MESSAGE`` characters) and an HTTP status."""

from __future__ import annotations

from http import HTTPStatus

MAX_MESSAGE = 300  # characters


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with `status`."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        message = " ".join(str(message).split())
        if len(message) > MAX_MESSAGE:  # a caller's input inside a message is never echoed whole
            message = message[: MAX_MESSAGE - 1] + "…"
        super().__init__(message)
        self.status = status
        self.message = message
