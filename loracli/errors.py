"""The one exception type for user mistakes.

The CLI turns a ``UserError`` into one sentence on stderr and exit code 2; anything else is a bug and keeps
its traceback. Library code raises it where the fix is on the user's side (a wrong path, a bad flag value).
"""


class UserError(Exception):
    """A mistake the user can fix; the message is one sentence saying what and how."""
