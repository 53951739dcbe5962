"""Errors in OpenAI's JSON shape, with the HTTP status a client acts on; gRPC statuses mapped to them.

`{"error": {"message", "type", "param", "code"}}`: OpenAI's clients read `message` into the
exception they raise, so a message names what was wrong (the field, in `param` too) and what
to do. Nothing here ever carries a traceback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import grpc

from doppel.rpc.interceptors import RETRY_AFTER_KEY

CLIENT_CLOSED = 499  # nginx's status for a request whose client went away: logged, never sent


@dataclass
class ApiError(Exception):
    """An answer other than 200: its status, message, and the field it is about."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        if self.status == 401:
            return "authentication_error"
        if self.status == 404:
            return "not_found_error"
        if self.status == 429:
            return "rate_limit_error"
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_field(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code="invalid_value")


def unsupported(param: str, hint: str = "") -> ApiError:
    return ApiError(400, f"{param} is not supported by Doppel{'; ' + hint if hint else ''}", param=param,
                    code="unsupported_parameter")


_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: CLIENT_CLOSED,
}


def from_rpc(err: grpc.aio.AioRpcError | grpc.RpcError) -> ApiError:
    """What a caller hears of an inference error: its message as the service said it, unless it is
    the service's own fault (then only that it failed: its log has the rest)."""
    code = err.code()
    status = _STATUS.get(code, 502)
    if code is grpc.StatusCode.UNAVAILABLE:
        return ApiError(503, "the inference service is not reachable now; retry shortly", code="service_unavailable")
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return ApiError(502, "the gateway's token (DOPPEL_API_TOKEN) is not the inference service's", code="upstream_auth")
    if status == 502:
        return ApiError(502, f"the inference service failed ({code.name}); its log has the details", code="upstream_error")
    headers = {}
    if status == 429:
        trailing: Any = err.trailing_metadata() or ()
        waited = next((v for k, v in trailing if k == RETRY_AFTER_KEY), None)
        headers["Retry-After"] = str(max(1, math.ceil(int(waited) / 1000))) if waited and str(waited).isdigit() else "1"
    return ApiError(status, err.details() or code.name, code=code.name.lower(), headers=headers)
