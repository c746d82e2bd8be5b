"""Errors meant for the person using the tool.

A `UserError` carries one sentence that says what is wrong and how to fix it; the
command line prints it as is and the page shows it as a warning. Anything else that
escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input or a state the user can fix; the message is shown verbatim."""


class Cancelled(Exception):
    """Raised inside long work when the user asked it to stop."""
