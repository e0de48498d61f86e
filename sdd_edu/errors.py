"""The one exception type users see: a clear, one-line message, never a traceback in the CLI."""


class SddError(ValueError):
    """Bad input or a missing resource, explained in words a reader can act on."""
