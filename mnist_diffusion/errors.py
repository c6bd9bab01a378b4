"""The one exception type that reaches the user as a single clear line instead of a traceback."""


class UserError(Exception):
    """Bad input or an unusable file: the CLI prints ``Error: <message>`` and exits non-zero."""

    exit_code = 1
