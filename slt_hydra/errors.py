"""User-facing errors: each message names what is wrong and what to change."""
import sys

from omegaconf.errors import OmegaConfBaseException


class SetupError(Exception):
    """A problem the user fixes by changing the command, the config, the data or the environment.

    Raised before any heavy work; the entry point prints it as one message, without a traceback.
    """


class CliError(SetupError):
    """A bad command line, or a run that cannot be reloaded; printed as one line, exit status 2."""


def report_error(prog: str, error: BaseException) -> int:
    """One line on stderr, no traceback, for an error the user fixes; returns the exit status (130 on Ctrl-C)."""
    if isinstance(error, KeyboardInterrupt):
        print(file=sys.stderr)
        return 130
    if isinstance(error, OmegaConfBaseException):  # an interpolation in the run's config that cannot resolve here
        error = f"cannot read the run's config: {str(error).splitlines()[0]}"
    print(f"{prog}: {error}", file=sys.stderr)
    return 2
