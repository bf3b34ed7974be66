"""The one exception type for mistakes a user can fix.

Where messages are worded (decided 2026-12, issue 20): by the layer that knows the thing the user
named. lora/ knows the file and the key, settings/ the config key, engine/ the model folder, so
each raises UserError with the name and the fix, and cli.py only prints it (exit 2). Wrapping a
ValueError at the command's edge would lose the file, key or value on the way up. Mistakes of a
programmer (a wrong argument from zsearch's own code) stay ValueError/TypeError/AssertionError.
This module imports nothing, so every layer may raise it.
"""


class UserError(Exception):
    """A user mistake: the CLI prints its one-line message and exits 2.

    The message names the thing (file, key, value) and says how to fix it.
    """
