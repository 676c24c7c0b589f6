"""The project's own error types.

``UserError`` is a problem with what the user gave (a file, a field, a name). The CLI prints
its message as one line and exits with status 2, without a traceback.
"""


class SasslError(Exception):
    """Base class of every error the project raises on purpose."""


class UserError(SasslError):
    """Bad input: the message names the file or field, what was expected and what was found."""
