"""Turning botocore exceptions into one-line :class:`AdapterhubError` messages.

Nothing here imports boto3 or botocore at module import time; the exception classes are looked up by
name so this module is cheap to import. Messages never contain credentials: known secrets are masked
and user-info is stripped from URLs.
"""

from __future__ import annotations

import re
from typing import Callable

from adapterhub.errors import AdapterhubError

#: error codes that mean "you may not do this" (credentials or policy)
DENIED = {
    "AccessDenied",
    "403",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AccountProblem",
    "InvalidSecurity",
}
#: error codes and statuses worth one more try in our own loop (botocore has already retried them)
RETRYABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "ConditionalRequestConflict",
}
#: botocore / urllib3 exception class names that mean the connection failed or dropped
CONNECTION_ERRORS = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ProxyConnectionError",
    "ResponseStreamingError",
    "IncompleteReadError",
    "HTTPClientError",
    "SSLError",
    "ProtocolError",
    "ConnectionError",
    "ConnectionResetError",
    "BrokenPipeError",
    "ConnectionRefusedError",
    "IncompleteRead",
    "TimeoutError",
}

_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` (``NoSuchKey``, ``404``...), else ``''``."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    code = str(response.get("Error", {}).get("Code", "") or "")
    if not code:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(status or "")
    return code


def http_status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return 0
    try:
        return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    except (TypeError, ValueError):
        return 0


def is_client_error(exc: BaseException) -> bool:
    return any(cls.__name__ == "ClientError" for cls in type(exc).__mro__) and isinstance(
        getattr(exc, "response", None), dict
    )


def is_connection_error(exc: BaseException) -> bool:
    return any(cls.__name__ in CONNECTION_ERRORS for cls in type(exc).__mro__)


def is_retryable(exc: BaseException) -> bool:
    if is_connection_error(exc):
        return True
    if is_client_error(exc):
        return error_code(exc) in RETRYABLE_CODES or http_status(exc) >= 500
    return False


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def translate(
    exc: BaseException, *, op: str, where: str, bucket: str, endpoint: str, attempts: int, scrub: Callable[[str], str]
) -> AdapterhubError:
    """A one-line :class:`AdapterhubError` for a failed S3 call ``op`` on ``where`` (an s3:// URL)."""
    name = type(exc).__name__
    if isinstance(exc, AdapterhubError):
        return exc
    if is_client_error(exc):
        code = error_code(exc)
        message = one_line(exc.response.get("Error", {}).get("Message", "") or "")
        if code == "NoSuchBucket":
            msg = f"S3 bucket '{bucket}' does not exist at endpoint {endpoint}; create it or fix the store URL"
        elif code in DENIED or http_status(exc) == 403:
            msg = (
                f"access denied to {where} ({code} on {op}); check the AWS credentials "
                "(AWS_ACCESS_KEY_ID / AWS_PROFILE) and the bucket policy"
            )
        elif code in RETRYABLE_CODES or http_status(exc) >= 500:
            msg = f"S3 endpoint {endpoint} kept failing {op} on {where} after {attempts} attempts ({code}{': ' + message if message else ''})"
        else:
            msg = f"S3 {op} failed on {where}: {code}{': ' + message if message else ''}"
    elif is_connection_error(exc):
        msg = f"cannot reach S3 endpoint {endpoint} after {attempts} attempts ({name}); check the endpoint URL and the network"
    elif name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        msg = (
            "no usable AWS credentials for " + where + ": set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or another standard AWS credential source"
        )
    elif name == "NoRegionError":
        msg = f"no AWS region configured for {where}: set AWS_DEFAULT_REGION or the 'region' option"
    elif (
        name in ("InvalidEndpointURL", "InvalidEndpointConfigurationError", "ValueError")
        and "endpoint" in str(exc).lower()
    ):
        msg = f"invalid S3 endpoint URL for {where}: {one_line(str(exc))}"
    else:
        msg = f"S3 {op} failed on {where}: {name}: {one_line(str(exc))}"
    err = AdapterhubError(scrub(_USERINFO.sub(r"\1", msg)))
    err.unreachable = is_connection_error(exc)  # type: ignore[attr-defined]
    return err
