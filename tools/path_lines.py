"""How much of the repo a reader walks from `train.main()` to the first optimiser step: python -m tools.path_lines.

Runs a tiny SimCLR training under `sys.settrace` and stops it at its first `optimizer.step`; prints the number of
distinct (file, line) pairs of the repo's own files that executed (tests and the virtual environment left out),
per file, and the number of files. What `import train` runs is not counted; a module that `main()` imports later
counts its module-level lines (its `def` and `class` lines). Run it in a fresh process (`python -m`).
"""
import argparse
import os
import sys
import tempfile
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ["--problem", "simclr", "--data", "fmnist", "--subset", "512", "--batch_size", "64", "--arch", "resnet18",
       "--width", "0.125", "--iters", "2", "--opt", "adamw", "--workers", "0"]


class FirstStep(BaseException):
    """Raised by the optimiser's pre-step hook: the path ends here."""


def repo_file(path):
    if path.startswith("<"):  # frozen and generated modules
        return False
    path = os.path.abspath(path)
    return path.startswith(ROOT + os.sep) and path != os.path.abspath(__file__) and not path.startswith(
        (os.path.join(ROOT, ".venv"), os.path.join(ROOT, "tests")))


def count(argv):
    """{(file, line)} executed from main() to the first optimiser step of `train.py argv`."""
    seen = set()

    def tracer(frame, event, arg):
        if not repo_file(frame.f_code.co_filename):
            return None
        if event == "line":
            seen.add((os.path.relpath(frame.f_code.co_filename, ROOT), frame.f_lineno))
        return tracer

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def stop(*_):
        raise FirstStep
    register_optimizer_step_pre_hook(stop)
    import train
    sys.settrace(tracer)
    try:
        train.main(argv)
    except FirstStep:
        pass
    finally:
        sys.settrace(None)
    return seen


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.path_lines", description=__doc__.split("\n\n")[0])
    p.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        seen = count(RUN + ["--root", root])
    files = Counter(f for f, _ in seen)
    for f, n in files.most_common():
        print(f"{n:5d}  {f}")
    print(f"{len(seen)} lines in {len(files)} files")
    return len(seen), len(files)


if __name__ == "__main__":
    main()
