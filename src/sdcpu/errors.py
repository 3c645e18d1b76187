"""The one error type the CLI turns into a one-line message and exit code 2."""


class UsageError(Exception):
    """Bad input or an unusable environment: reported as one line on stderr, exit code 2, no traceback."""

    exit_code = 2
