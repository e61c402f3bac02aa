"""The one error type the service answers with: ``{"error": message}`` and an HTTP status."""

from __future__ import annotations

from http import HTTPStatus


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with `status`."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
