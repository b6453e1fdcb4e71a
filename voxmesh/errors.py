"""Errors as gRPC statuses. Code raises `ApiError` (or a subclass); the server's error
interceptor turns it into `context.abort(code, message)` with google.rpc.Status details
(a BadRequest naming the offending field where there is one). Never `success=false` in a body."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class ApiError(Exception):
    """An error a caller should see, with the gRPC code that fits it."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.violations: list[FieldViolation] = (
            [FieldViolation(field, message)] if field is not None else []
        )

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """google.rpc.Status with details, as grpc-status-details-bin trailing metadata."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.violations:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in self.violations
                    ]
                )
            )
            status.details.append(detail)
        return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


class InvalidArgument(ApiError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ApiError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ApiError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ApiError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(ApiError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ApiError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ApiError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ApiError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ApiError):
    code = grpc.StatusCode.DATA_LOSS
