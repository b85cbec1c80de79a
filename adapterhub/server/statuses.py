"""The HTTP status of each error the registry raises, for the API's JSON errors and the web UI's pages alike."""

from __future__ import annotations

from ..errors import AdapterhubError, BaseMismatch, IntegrityError, InvalidInput, NotFound
from ..registry.tokens import AuthError, Forbidden


class PayloadTooLarge(InvalidInput):
    """An upload over ``max_blob_size`` (HTTP 413)."""


class LengthRequired(InvalidInput):
    """An upload without ``Content-Length`` (HTTP 411)."""


_STATUS: list[tuple[type[BaseException], int]] = [
    (AuthError, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (PayloadTooLarge, 413),
    (LengthRequired, 411),
    (IntegrityError, 409),
    (BaseMismatch, 400),
    (InvalidInput, 400),
]


def status_of(exc: BaseException) -> int:
    """401/403/404/409/411/413/400 for the registry's errors; 500 for anything else (a bug)."""
    from ..registry.gates import GateRefused

    if isinstance(exc, GateRefused):
        return 409
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 400 if isinstance(exc, AdapterhubError) else 500
