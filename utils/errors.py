"""The one way a run ends early: raise, where the failure is found, and let `train.main` (or the per-node launcher's
worker) turn it into the exit code. Nothing below them ends the process."""


class Failure(Exception):
    """A run that cannot go on: `code` is the process's exit status, the message its one line on stderr (empty when
    the run already said why, as a stop signal's line in log.txt). One line by construction: a line break inside it
    (from a key, a file name or a token the user typed) is shown escaped, as is a file name's byte that is not UTF-8."""

    code = 1

    def __init__(self, message="", code=None):
        text = str(message).encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(text.replace("\r", "\\r").replace("\n", "\\n"))
        if code is not None:
            self.code = code


class UserError(Failure):
    """Bad input from the user (a flag, a file, a checkpoint): one line, exit code 2, nothing written."""

    code = 2
