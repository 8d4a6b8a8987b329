"""exman run folders: params.yaml, log.txt, logs.csv. Only the main process ever calls these."""
import datetime
import os
import pathlib

import pandas as pd
import yaml
from exman.parser import ExmanDirectory, PARAMS_FILE, TIME_FORMAT

LOGS_CSV = "logs.csv"


def create_run_folder(args):
    """A new numbered folder under <root>/runs (or <root>/tmp), indexed so that exman.Index(root).info() lists it."""
    root = ExmanDirectory(os.path.abspath(args.root))
    folder = root.new_directory(tmp=args.tmp, tag=args.name)
    params = {k: v for k, v in sorted(vars(args).items()) if k not in ("explicit", "given")}
    params.update(root=str(folder.relroot), time=folder.time.strftime(TIME_FORMAT), id=int(folder.num))
    with open(folder.absroot / PARAMS_FILE, "w") as f:
        yaml.safe_dump(params, f, default_flow_style=False)
    if not args.tmp:
        (root.index / f"{folder.name}.yaml").symlink_to(pathlib.Path("..", "runs", folder.name, PARAMS_FILE))
    return str(folder.absroot)


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
        tmp = os.path.join(self.folder, LOGS_CSV + ".tmp")
        pd.DataFrame(self.rows).to_csv(tmp, index=False)
        os.replace(tmp, os.path.join(self.folder, LOGS_CSV))
