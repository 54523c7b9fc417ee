"""The one error family a stage turns into a message and an exit status instead of a traceback."""


class InputError(ValueError):
    """An input a stage cannot use (data, checkpoint, config slice); the message names it and the fix."""
