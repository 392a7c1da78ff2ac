"""The one exception type for mistakes a user can fix: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input or a refused action; the message names the file, field or value and what was expected."""
