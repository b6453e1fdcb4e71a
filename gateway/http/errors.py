"""Errors in the shape OpenAI's clients expect: `{"error": {"message", "type", "param", "code"}}`
with the HTTP status that fits; a gRPC status from the control plane maps to one here."""

from __future__ import annotations

from typing import Any

import grpc
from fastapi.responses import JSONResponse
from google.rpc import error_details_pb2, status_pb2


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code,
        )  # fmt: skip
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.body()}, status_code=self.status, headers=self.headers)


def bad_field(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


def _field(err: grpc.aio.AioRpcError) -> str | None:
    """The field a refused request got wrong, from google.rpc.BadRequest in the trailers."""
    trailers: Any = err.trailing_metadata() or ()
    for key, value in trailers:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad) and bad.field_violations:
                    return bad.field_violations[0].field
    return None


# The HTTP API's own names for the job fields the control plane names in its refusals.
_PARAMS = {
    "tts.text": "input", "stt.initial_prompt": "prompt", "input_file_id": "file",
    "dubbing.target_language": "target_lang", "dubbing.source_language": "source_lang",
    # the upload of the request's file (UploadFile's own fields): the client sent `file`
    "data": "file", "filename": "file", "content_type": "file", "sha256": "file",
}  # fmt: skip


def _param(field: str | None) -> str | None:
    """A refused field as the client sent it ("tts.voice" -> "voice")."""
    if field is None:
        return None
    return _PARAMS.get(field, field.split(".", 1)[-1])


def from_grpc(err: grpc.aio.AioRpcError) -> ApiError:
    code, message, field = err.code(), err.details() or "", _param(_field(err))
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return ApiError(401, message, code="invalid_api_key")
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return ApiError(403, message, type_="permission_error", code="permission_denied")
    if code is grpc.StatusCode.NOT_FOUND:
        return ApiError(404, message, param=field, code="not_found")
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        if field == "size_bytes":
            return ApiError(413, message, param="file", code="file_too_large")
        return ApiError(400, message, param=field, code="invalid_value")
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
        return ApiError(409, message, param=field, code="conflict")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ApiError(
            429, message, type_="rate_limit_error", code="rate_limit_exceeded",
            headers={"retry-after": "5"},
        )  # fmt: skip
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ApiError(
            503, f"Voxmesh is unavailable right now; try again shortly ({message})",
            type_="server_error",
            code="unavailable", headers={"retry-after": "5"},
        )  # fmt: skip
    if code is grpc.StatusCode.DATA_LOSS:
        return ApiError(500, message, type_="server_error", code="data_loss")
    return ApiError(500, message or "internal error", type_="server_error", code="internal_error")
