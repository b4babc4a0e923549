"""The facade's error tree, mapped to an HTTP status and an OperationOutcome in one place.

    FacadeError
     ├── InvalidRequest            400 invalid       malformed value, bad prefix, bad _count
     │    └── UnsupportedSearch    400 not-supported unknown parameter/modifier under Prefer: handling=strict
     ├── TooCostly                 400 too-costly    a criterion matches more rows than we will page through
     ├── NotFound                  404 not-found
     ├── MethodNotAllowed          405 not-supported
     ├── PreconditionFailed        412 multiple-matches  If-None-Exist matched more than one resource
     ├── Unprocessable             422 processing    a well-formed manifest the PACS contradicts (unknown UIDs, ...)
     ├── NotAcceptable             406 not-supported format/fhirVersion the client asks for is not served
     ├── UnsupportedMediaType      415 not-supported
     └── UpstreamError                               anything the PACS did wrong; message never names the PACS URL
          ├── UpstreamUnavailable  503 transient     connection refused / reset
          ├── UpstreamTimeout      504 timeout
          └── UpstreamBadResponse  502 exception     non-2xx, not JSON, not DICOM JSON

Every 4xx/5xx the service sends is built by :func:`outcome` (FHIR R4 OperationOutcome, issue.code from
http://hl7.org/fhir/issue-type). Unexpected exceptions become a fixed 500 outcome with no internals.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

logger = logging.getLogger(__name__)


class FacadeError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "exception"
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(FacadeError):
    status, code = 400, "invalid"


class UnsupportedSearch(InvalidRequest):
    code = "not-supported"


class TooCostly(FacadeError):
    status, code = 400, "too-costly"


class NotFound(FacadeError):
    status, code = 404, "not-found"


class MethodNotAllowed(FacadeError):
    status, code = 405, "not-supported"


class PreconditionFailed(FacadeError):
    status, code = 412, "multiple-matches"


class Unprocessable(FacadeError):
    status, code = 422, "processing"


class NotAcceptable(FacadeError):
    status, code = 406, "not-supported"


class UnsupportedMediaType(FacadeError):
    status, code = 415, "not-supported"


class UpstreamError(FacadeError):
    status, code = 502, "exception"


class UpstreamUnavailable(UpstreamError):
    status, code = 503, "transient"
    # Argonaut SMART Imaging: a client SHOULD retry after a 503 with Retry-After.
    headers: ClassVar[dict[str, str]] = {"Retry-After": "5"}


class UpstreamTimeout(UpstreamError):
    status, code = 504, "timeout"


class UpstreamBadResponse(UpstreamError):
    status, code = 502, "exception"


def outcome(code: str, message: str, *, severity: str = "error") -> dict[str, Any]:
    """A one-issue OperationOutcome (R4 4.0.1: issue.severity and issue.code are required)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": message}],
    }


INTERNAL_ERROR = outcome("exception", "Internal server error", severity="fatal")

# Framework-raised HTTP errors (routing, methods) keyed by status -> issue code.
HTTP_STATUS_CODES: dict[int, str] = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    413: "too-costly",
    415: "not-supported",
    422: "processable",
    429: "throttled",
}
