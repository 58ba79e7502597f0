"""The one exception type users see. The CLI prints its message as a single line and exits non-zero."""


class UserError(ValueError):
    """A problem the user can fix (bad file, bad option, missing weights). The message says what to do.

    A ``ValueError``: code that calls the library may catch bad input the usual Python way."""
