"""exman run folders: params.yaml, log.txt, logs.csv. Only the main process ever calls these."""
import contextlib
import csv
import datetime
import errno
import fcntl
import io
import math
import os
import pathlib
import socket
import sys
import time

import yaml

from utils import checkpoint
from utils.checkpoint import write_atomic
from utils.errors import UserError

LOGS_CSV = "logs.csv"
PARAMS_FILE = "params.yaml"  # exman's name for a run's flags (exman.parser.PARAMS_FILE)


def create_run_folder(args, auto=False):
    """A new numbered folder under <root>/runs (or <root>/tmp), indexed so that exman.Index(root).info() lists it,
    and held by this process (`hold`). `auto` (a --resume auto launch that found no run to continue): under a lock on
    the run's name, so that launches of one name at the same moment make one run: a launch that finds a run of its name
    already held by a live process (made since it looked) stops in one line."""
    if auto:
        with name_lock(args.root, args.name):
            live = live_run(args.root, args.name, args.problem)
            if live:
                raise UserError(f"another --resume auto --name {args.name} launch started {live} at the same moment: "
                                f"that one trains the run, this one stops")
            return create_run_folder(args)
    # exman imports GitPython, which refuses to import where no git program is installed; no git feature is used here
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    from exman.parser import ExmanDirectory, TIME_FORMAT  # imported here: pandas and git cost a start-up 0.4 s
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
    hold(folder.absroot)
    return str(folder.absroot)


@contextlib.contextmanager
def name_lock(root, name):
    """An exclusive POSIX lock on <root>/locks/<name>.lock inside the block, waited for: one launch at a time looks for
    and makes the run of a name."""
    folder = os.path.join(root, "locks")
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, f"{name or '_'}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def live_run(root, name, problem):
    """A run folder of this name and problem whose train.lock a live process holds, or None."""
    for kind in ("runs", "tmp"):
        where = os.path.join(root, kind)
        for folder in sorted(os.listdir(where), reverse=True) if os.path.isdir(where) else []:
            folder = os.path.join(where, folder)
            params = run_params(folder)
            if params and params.get("name") == name and params.get("problem") == problem and held_elsewhere(folder):
                return folder
    return None


def held_elsewhere(folder):
    """True when another process holds `folder`'s train.lock."""
    path = os.path.join(folder, LOCK)
    if os.path.abspath(folder) in _held or not os.path.exists(path):
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False  # (closing the descriptor drops the lock at once)
    except OSError:
        return True
    finally:
        os.close(fd)


LOCK = "train.lock"
_held = {}  # run folder -> the open file that holds its lock, for as long as this process trains it


def hold(folder, wait=0.0):
    """Make this process the one that trains `folder`: an exclusive POSIX lock on <folder>/train.lock, which the
    kernel releases when the process ends, however it ends. POSIX locks belong to the process: the data loader's
    forked workers do not inherit it (an flock they would), and NFS carries them between machines. A folder another
    live process holds is refused with one line naming it (host and PID), or waited for up to `wait` seconds. Where
    the file system has no locks, a warning. (A POSIX lock also goes when the process closes any other descriptor
    of the file: nothing else here opens it.)"""
    folder = os.path.abspath(folder)
    if folder in _held:
        return
    path = os.path.join(folder, LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot lock the run folder {folder}: {e.strerror} ({path})")
    deadline, told = time.time() + wait, False
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    print(f"warning: the file system of {folder} has no file locks ({e.strerror}): nothing stops a "
                          f"second process from training this run folder at the same time", file=sys.stderr)
                    return
                raise UserError(f"cannot lock the run folder {folder}: {e.strerror}")
            holder = _holder(fd)
            if time.time() >= deadline:
                os.close(fd)
                raise UserError(f"{folder} is being trained by {holder}: one process trains a run folder at a time; "
                                f"wait for it to end (--lock_wait SECONDS waits) or stop it")
            if not told:
                print(f"waiting up to {wait:g} s for {holder}, which is training {folder}", flush=True)
                told = True
            time.sleep(min(1.0, max(0.0, deadline - time.time())))
    _held[folder] = fd
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()} pid {os.getpid()} since {datetime.datetime.now():%Y-%m-%d %H:%M:%S}\n"
                 .encode())
    except OSError as e:  # a full disk: the lock is held all the same, but say which file could not be written
        raise OSError(e.errno, e.strerror, path) from None


def _holder(fd):
    text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    return f"the process of {text}" if text else "another process"


def release(folder=None):
    """Give up the lock on `folder` (on every folder this process holds when None)."""
    for held in [os.path.abspath(folder)] if folder else list(_held):
        fd = _held.pop(held, None)
        if fd is not None:
            os.close(fd)


def _read_params(path):
    try:
        with open(path) as f:
            params = yaml.safe_load(f) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path} cannot be read ({type(e).__name__}): repair or remove that run folder")
    if not isinstance(params, dict):
        raise UserError(f"{path} is not a run's flags (a YAML mapping): repair or remove that run folder")
    return params


DONE = "done.yaml"


def mark_done(folder, step, metrics):
    """The run is finished: its last step, save and evaluation are done (`--resume auto` starts a new run)."""
    text = yaml.safe_dump(dict(step=step, **{k: float(v) for k, v in metrics.items()}), default_flow_style=False)
    write_atomic(os.path.join(folder, DONE), lambda f: f.write(text.encode()))


def resumed_run(run):
    """(checkpoint, its saved flags) of the run that `--resume` names in `run` (config.run_flags), or None for a new
    run (`auto` with no unfinished run of --name). The process that trains run folders (global rank 0 under
    torchrun, else node 0's launcher) takes the folder's lock before anything of it is read; a dry run only reads."""
    trains_folders = not run.dry_run and os.environ.get("RANK", "0") == "0" and run.node_rank == 0
    lock = run.lock_wait if trains_folders else None
    if run.resume == "auto":
        if not run.name:
            raise UserError("--resume auto needs --name: it continues the newest run of that name when unfinished")
        found = unfinished_run(run.root, run.name, run.problem, lock)
    else:
        found = run.resume
        if found and lock is not None and os.path.exists(found):
            hold(found if os.path.isdir(found) else os.path.dirname(found), lock)
    return (checkpoint.resolve(found), checkpoint.saved_args(found)) if found else None


def unfinished_run(root, name, problem=None, lock=None):
    """The newest run folder named `name` (of `problem`, when given) in the exman root, indexed or scratch (--tmp), if
    it is not finished (no runlog.DONE: stopped before or during its last step, evaluation or save), else None. Runs
    without a checkpoint yet are passed over. A run whose params.yaml is empty or unreadable (a power loss while it
    was written) is recognised by its checkpoint's flags, and said so. With `lock` (the wait in seconds), the run
    found is held by this process, after waiting for the process that trains it, if any."""
    folders = [os.path.join(root, kind, f) for kind in ("runs", "tmp") if os.path.isdir(os.path.join(root, kind))
               for f in os.listdir(os.path.join(root, kind))]
    for folder in sorted(folders, key=os.path.basename, reverse=True):  # exman numbers runs and tmp together
        params = run_params(folder)
        if params is None or params.get("name") != name or (problem and params.get("problem") != problem):
            continue
        if lock is not None:  # a live run of this name is waited for (or refused) even before its first checkpoint
            hold(folder, lock)
        if not os.path.isfile(os.path.join(folder, checkpoint.CHECKPOINT)):
            release(folder)
            continue
        if not os.path.isfile(os.path.join(folder, DONE)):
            return folder
        release(folder)
        return None
    return None


def run_params(folder):
    """A run folder's flags: its params.yaml, or where that is empty or unreadable, its checkpoint's; None when it has
    neither (not a run folder, or one made before its first checkpoint whose params.yaml was lost)."""
    path = os.path.join(folder, PARAMS_FILE)
    try:
        params = _read_params(path) if os.path.isfile(path) else None
    except UserError:
        params = None
    if params:
        return params
    if not os.path.isfile(os.path.join(folder, checkpoint.CHECKPOINT)):
        return None
    try:
        saved = checkpoint.load(folder, mmap=True)["args"]
    except UserError:
        return None
    print(f"{path} is {'unreadable' if os.path.isfile(path) else 'missing'} or empty: the run is known by the flags "
          f"its checkpoint saved (name {saved.get('name')!r}, problem {saved.get('problem')!r})", file=sys.stderr)
    return saved


def read_rows(path):
    """The rows of a logs.csv as {column: text}; a torn or garbled file (a row of another length than the header, an
    unclosed quote, a row without its step) raises ValueError or csv.Error."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, strict=True)
        header = next(reader, None)
        if not header or "iter" not in header:
            raise ValueError("no header with an iter column")
        rows = []
        for line in reader:
            if len(line) != len(header):
                raise ValueError(f"line {reader.line_num} has {len(line)} fields, the header {len(header)}")
            float(line[header.index("iter")])
            rows.append(dict(zip(header, line)))
    return rows


def cell(value):
    """A logs.csv cell: a number as Python prints it (floats round-trip exactly), NaN as an empty cell."""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value)


class RunLog:
    """log.txt gets every printed line; logs.csv one row per log interval (columns may appear later, and a row's
    missing columns are empty cells, as pandas reads and writes them)."""

    def __init__(self, folder, resume_step=None):
        self.folder = folder
        self.rows = []  # {column: cell text}
        path = os.path.join(folder, LOGS_CSV)
        if resume_step is not None and os.path.exists(path):
            try:
                self.rows = [row for row in read_rows(path) if float(row["iter"]) <= resume_step]
            except (OSError, ValueError, UnicodeDecodeError, csv.Error) as e:
                raise UserError(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
                                f"move it aside and resume again to start a new one")

    def print(self, *parts):
        """The line on stdout and, timestamped, in log.txt; a path that is not UTF-8 is shown escaped. A failed write
        raises an OSError naming log.txt."""
        line = " ".join(str(p) for p in parts).encode("utf-8", "backslashreplace").decode("utf-8")
        print(line, flush=True)
        path = os.path.join(self.folder, "log.txt")
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"[{datetime.datetime.now():%Y-%m-%d %H:%M:%S}] {line}\n")
        except OSError as e:
            raise OSError(e.errno, e.strerror, path) from None

    def row(self, **values):
        values = {k: cell(v) for k, v in values.items()}
        if self.rows and float(self.rows[-1]["iter"]) == float(values["iter"]):
            self.rows[-1].update(values)  # an evaluation at the step of a training row joins it
        else:
            self.rows.append(values)
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([row.get(k, "") for k in columns] for row in self.rows)
        text = out.getvalue().encode()
        write_atomic(os.path.join(self.folder, LOGS_CSV), lambda f: f.write(text))


def runs_table(root, say=print):
    """Every indexed run under the exman root `root` as a pandas DataFrame, a row per run (its flags, `id`, `root`,
    `time`, and `folder`), newest last, for notebooks. Each run is read on its own, with a YAML safe loader (nothing in
    a run folder is unpickled or evaluated); a damaged or odd one (a dangling index link, a params.yaml that does not
    parse or is not a mapping) is left out with one line naming it, given to `say`."""
    import pandas as pd  # (imported here: a run never needs it)
    index = os.path.join(root, "index")
    rows = []
    for name in sorted(os.listdir(index)) if os.path.isdir(index) else []:
        link = os.path.join(index, name)
        folder = os.path.dirname(os.path.realpath(link))
        try:
            params = _read_params(link)
        except UserError as e:
            say(f"left out {name}: {e if os.path.exists(link) else 'its run folder is gone (a dangling index link)'}")
            continue
        rows.append(dict(params, folder=folder))
    table = pd.DataFrame(rows)
    return table.sort_values("id").reset_index(drop=True) if "id" in table else table


def logs_table(runs, say=print):
    """The logs.csv rows of the runs of `runs` (runs_table's), with their `id` and `problem`; a run whose logs.csv is
    missing or garbled is left out with one line naming it."""
    import pandas as pd
    frames = []
    for _, run in runs.iterrows():
        path = os.path.join(run["folder"], LOGS_CSV)
        if not os.path.exists(path):
            continue
        try:
            read_rows(path)  # the same checks as a resume's: a torn or garbled file is said, not parsed half-way
            frames.append(pd.read_csv(path).assign(id=run["id"], problem=run.get("problem")))
        except (OSError, ValueError, csv.Error, UnicodeDecodeError, pd.errors.ParserError) as e:
            say(f"left out the logs of run {run['id']} ({path}): {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["id", "problem", "iter"])
