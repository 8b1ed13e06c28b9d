"""Errors as the OpenAI API shapes them: an HTTP status and {"error": {"message", "type", "param", "code"}}.

The `openai` client raises BadRequestError (400), AuthenticationError (401), NotFoundError (404) and
InternalServerError (5xx) from these, with the message shown to the user.
"""

from __future__ import annotations

from typing import Any

from simcli.errors import SimcliError

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",  # as OpenAI answers an unknown model or route
    413: "invalid_request_error",
    503: "overloaded_error",
}


class APIError(Exception):
    """A request the server refuses, with the status and the one-line message the client sees."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def from_simcli(e: SimcliError, param: str | None = None) -> APIError:
    """A library error caused by the request's values (bad option, unusable input): 400 with its message."""
    return APIError(400, str(e), param=param, code=type(e).__name__)
