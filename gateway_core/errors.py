"""The one error type of the gateway and how it is rendered for each client dialect."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson


class ConfigError(Exception):
    """The configuration is invalid; the message names the file and the key."""


class GatewayError(Exception):
    """An error answered to the client.

    ``type`` and ``code`` follow OpenAI's error object; the Anthropic dialect maps them to its own.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})
        #: The upstream's HTTP status when this error stands for an upstream's error answer.
        self.upstream_status: int | None = None

    def openai_body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.message!r}, type={self.type!r}, code={self.code!r})"


# Constructors for the errors the core raises, so the same situation always reads the same.


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def invalid_api_key(message: str = "Incorrect API key provided.") -> GatewayError:
    return GatewayError(401, message, code="invalid_api_key")


def missing_api_key() -> GatewayError:
    return GatewayError(
        401,
        "You didn't provide an API key. Provide it in the Authorization header "
        "(Authorization: Bearer YOUR_KEY) or the X-API-Key header.",
        code="missing_api_key",
    )


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def model_not_allowed(model: str) -> GatewayError:
    return GatewayError(
        403,
        f"This API key is not allowed to use the model `{model}`.",
        type="permission_error",
        param="model",
        code="model_not_allowed",
    )


def upstream_error(
    message: str,
    *,
    status: int = 502,
    code: str = "upstream_error",
    headers: Mapping[str, str] | None = None,
) -> GatewayError:
    return GatewayError(
        status, message, type="server_error" if status < 504 else "timeout", code=code, headers=headers
    )


class DeploymentLimited(GatewayError):
    """Every credential of a deployment (or the deployment itself) is at its RPM/TPM limit.

    The pipeline takes it as "try another deployment"; ``retry_after`` is the number of seconds until
    the deployment can take a call again.
    """

    def __init__(self, deployment: str, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            429,
            f"The deployment {deployment} is at its rate limit; retry in {seconds}s.",
            type="rate_limit_error",
            code="deployment_rate_limited",
            headers={"Retry-After": str(seconds)},
        )
        self.retry_after = retry_after


def error_payload_from(body: bytes) -> dict[str, Any] | None:
    """Return the ``error`` object of an OpenAI-shaped error body, or None when the body is not one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return error
        if isinstance(error, str):  # some OpenAI-compatible servers answer {"error": "text"}
            return {"message": error}
        if isinstance(data.get("message"), str):
            return {"message": data["message"]}
    return None
