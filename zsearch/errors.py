"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
    """A user mistake: the CLI prints its one-line message and exits 2.

    The message names the thing (file, key, value) and says how to fix it.
    """
