"""The error every module raises for bad input."""


class UserError(Exception):
    """Bad input from the user (a flag, a file, a checkpoint): train.py prints it as one line and exits with code 2.
    One line by construction: a line break inside it (from a key, a file name or a token the user typed) is shown
    escaped."""

    def __init__(self, message):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))
