"""The one exception type a user sees.

Anything the user can cause (a bad argument, a missing file, a corrupt image)
is raised as an `NvramfsError` subclass; the CLI prints its message as one line
and exits with its `exit_code`. Anything else is a bug and gets a traceback.
"""


class NvramfsError(Exception):
    """An error to report to the user in one line, then exit with `exit_code`."""

    exit_code: int = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(NvramfsError):
    """The command line asks for something that cannot be done (exit 2)."""

    exit_code = 2
