"""The one exception type users see. The CLI prints its message as a single line and exits non-zero."""


class UserError(Exception):
    """A problem the user can fix (bad file, bad option, missing weights). The message says what to do."""
