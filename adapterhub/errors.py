"""Exceptions. Every error a user can cause is an :class:`AdapterhubError` with a one-line message;
the CLI prints it as ``Error: ...`` and exits 1."""


class AdapterhubError(Exception):
    """A user-facing error: the message is one line and says what to do."""


class NotFound(AdapterhubError):
    """A name, version, alias, digest or file does not exist."""


class InvalidInput(AdapterhubError):
    """Bad input: a malformed name or ref, a corrupt file, a wrong shape."""


class IntegrityError(AdapterhubError):
    """Stored content does not match its digest (a corrupt or missing blob)."""


class PluginError(AdapterhubError):
    """A plugin failed to load or registered something invalid (e.g. a duplicate name)."""


class BaseMismatch(AdapterhubError):
    """An adapter is used with a base whose fingerprint differs from the one it was trained on."""


class ReportedElsewhere(AdapterhubError):
    """This process failed because another process of the same run did, and that one printed the error
    (``train`` under ``torchrun``): the CLI exits non-zero without a second ``Error:`` line."""


def describe(exc: BaseException) -> str:
    """The one line a user sees for ``exc``: the message of an :class:`AdapterhubError`, the reason and
    file of an ``OSError``, else the exception type and the first line of its message."""
    if isinstance(exc, AdapterhubError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror or first_line(exc)}:{where}".rstrip(":")
    return f"{type(exc).__name__}: {first_line(exc)}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
