"""exman run folders: params.yaml, log.txt, logs.csv. Only the main process ever calls these."""
import datetime
import os
import pathlib

import pandas as pd
import yaml

# exman imports GitPython, which refuses to import where no git program is installed; no git feature is used here
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
from exman.parser import ExmanDirectory, PARAMS_FILE, TIME_FORMAT  # noqa: E402  (after the variable)

from utils import checkpoint
from utils.checkpoint import write_atomic
from utils.errors import UserError

LOGS_CSV = "logs.csv"


def create_run_folder(args):
    """A new numbered folder under <root>/runs (or <root>/tmp), indexed so that exman.Index(root).info() lists it."""
    try:
        root = ExmanDirectory(os.path.abspath(args.root))
        folder = root.new_directory(tmp=args.tmp, tag=args.name)
        params = dict(sorted(vars(args).items()), root=str(folder.relroot), time=folder.time.strftime(TIME_FORMAT),
                      id=int(folder.num))
        with open(folder.absroot / PARAMS_FILE, "w") as f:
            yaml.safe_dump(params, f, default_flow_style=False)
        if not args.tmp:
            (root.index / f"{folder.name}.yaml").symlink_to(pathlib.Path("..", "runs", folder.name, PARAMS_FILE))
    except OSError as e:
        raise UserError(f"cannot make a run folder under --root {args.root}: {e.strerror or e}")
    return str(folder.absroot)


def unfinished_run(root, name, problem=None):
    """The newest run folder named `name` (of `problem`, when given) in the exman root if its checkpoint has not
    reached its last step, else None. Runs without a checkpoint yet are passed over."""
    runs = os.path.join(root, "runs")
    folders = sorted(os.listdir(runs), reverse=True) if os.path.isdir(runs) else []  # exman numbers them: newest last
    for folder in folders:
        params_file = os.path.join(runs, folder, PARAMS_FILE)
        if not os.path.isfile(params_file):
            continue
        with open(params_file) as f:
            params = yaml.safe_load(f) or {}
        if params.get("name") != name or (problem and params.get("problem") != problem):
            continue
        if not os.path.isfile(os.path.join(runs, folder, checkpoint.CHECKPOINT)):
            continue
        ckpt = checkpoint.load(os.path.join(runs, folder), mmap=True)
        return os.path.join(runs, folder) if ckpt["step"] < ckpt.get("total", float("inf")) else None
    return None


class RunLog:
    """log.txt gets every printed line; logs.csv one row per log interval (columns may appear later)."""

    def __init__(self, folder, resume_step=None):
        self.folder = folder
        self.rows = []
        csv = os.path.join(folder, LOGS_CSV)
        if resume_step is not None and os.path.exists(csv):
            old = pd.read_csv(csv)
            self.rows = old[old["iter"] <= resume_step].to_dict("records")

    def print(self, *parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        with open(os.path.join(self.folder, "log.txt"), "a") as f:
            f.write(f"[{datetime.datetime.now():%Y-%m-%d %H:%M:%S}] {line}\n")

    def row(self, **values):
        if self.rows and self.rows[-1]["iter"] == values["iter"]:
            self.rows[-1].update(values)  # an evaluation at the step of a training row joins it
        else:
            self.rows.append(values)
        csv = pd.DataFrame(self.rows).to_csv(index=False).encode()
        write_atomic(os.path.join(self.folder, LOGS_CSV), lambda f: f.write(csv))
