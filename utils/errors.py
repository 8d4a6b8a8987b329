"""The error every module raises for bad input."""


class UserError(Exception):
    """Bad input from the user (a flag, a file, a checkpoint): train.py prints it as one line and exits with code 2."""
