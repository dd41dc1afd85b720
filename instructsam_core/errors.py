"""Errors that carry a message meant for the user (bad path, bad file, bad argument)."""


class UserError(Exception):
    """A problem the user can fix; the CLI prints it as one line, without a traceback."""


class CheckpointError(UserError):
    """A model directory that is missing files or whose weights do not match the architecture."""
