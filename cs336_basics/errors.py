"""The one exception type for bad user input: entry points print its message on one line and exit 2."""


class UserError(Exception):
    """Something the user can fix (a flag, a file, a checkpoint); the message says what and how."""
