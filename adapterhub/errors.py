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
