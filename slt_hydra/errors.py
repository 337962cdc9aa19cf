"""User-facing errors: each message names what is wrong and what to change."""


class SetupError(Exception):
    """A problem the user fixes by changing the command, the config, the data or the environment.

    Raised before any heavy work; the entry point prints it as one message, without a traceback.
    """
