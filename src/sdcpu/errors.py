"""The errors sdcpu reports as one line: bad input (UsageError: the CLI's exit code 2, HTTP's 4xx) and a recipe step
that does not apply here (Skip: its reason is shown beside the step)."""


class UsageError(Exception):
    """Bad input or an unusable environment: reported as one line on stderr, exit code 2, no traceback."""

    exit_code = 2


class Skip(Exception):
    """Raised by a step that cannot or should not apply here; its message is the reason shown to the user."""
