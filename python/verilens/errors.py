"""The one exception type users see. Every error a user can cause is a VerilensError
with a message that says what went wrong and what to do."""


class VerilensError(Exception):
    """A problem with the user's input, files or environment (not a bug in verilens)."""
