"""Process groups: launching, the gradient-carrying gather, SyncBatchNorm groups. Every helper also works in one plain process.

Two ways to start W processes:
- per node, `python train.py --dist ddp --dist_address host:port --node_rank i --world_size <nodes>`
  spawns `--num_proc_per_node` processes here; global rank = node_rank * procs_per_node + local rank;
- `torchrun` (or anything that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
NCCL on GPUs, gloo on CPU.
"""
import datetime
import errno
import gc
import logging
import os
import re
import signal
import socket
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils.errors import Failure, UserError

LOST_GROUP = 3  # exit code of a rank whose peers died or stopped answering


def is_on():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_on() else 0


def world_size():
    return dist.get_world_size() if is_on() else 1


def is_main():
    return rank() == 0


def barrier():
    if is_on():
        dist.barrier()


def pick_device(name=None):
    """The torch.device of --device `name`; by default cuda where a GPU is visible, else cpu."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device: cpu, cuda or cuda:<index>")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible on this machine")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: only cpu and cuda are supported")
    return device


def under_torchrun():
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def procs_per_node(args):
    """Processes on this node: torchrun's LOCAL_WORLD_SIZE, else --num_proc_per_node (-1: one per GPU, else 1)."""
    if under_torchrun():
        return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if args.dist == "none":
        return 1
    return args.num_proc_per_node if args.num_proc_per_node > 0 else max(1, torch.cuda.device_count())


def total_procs(args):
    if under_torchrun():
        return int(os.environ["WORLD_SIZE"])
    return 1 if args.dist == "none" else args.world_size * procs_per_node(args)


def launch(fn, args):
    """fn(args) in every process of this node, each with its process group and device set; a plain call when not
    distributed. Returns what fn returns (the local rank 0's, when this launcher spawned the processes); raises
    Failure when a process fails. Whatever the launcher installs (its signal handlers, a logger's level) is the
    caller's again when it returns or raises."""
    if under_torchrun():
        local = int(os.environ["LOCAL_RANK"])
        args = _setup(args, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), local, procs_per_node(args), "env://")
        try:
            return fn(args)
        except RuntimeError as e:
            line = lost_group(e, int(os.environ["RANK"]))
            if line is None:
                raise
            raise Failure(line, LOST_GROUP) from None
        finally:
            shutdown()
    if args.dist == "none":
        return fn(args)
    if not 0 <= args.node_rank < args.world_size:
        raise UserError(f"--node_rank {args.node_rank} must be in [0, --world_size {args.world_size})")
    if ":" not in args.dist_address:
        raise UserError(f"--dist_address {args.dist_address!r} must be host:port")
    check_host(args.dist_address)
    if args.node_rank == 0:
        check_port(args.dist_address)
    nprocs = procs_per_node(args)
    if args.device and args.device.startswith("cuda") and nprocs > torch.cuda.device_count():
        raise UserError(f"--num_proc_per_node {nprocs} is more than the {torch.cuda.device_count()} GPUs here")
    logger = logging.getLogger("torch.multiprocessing.spawn")
    handlers, level = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}, logger.level
    warnings = os.environ.get("PYTHONWARNINGS")
    # a rank killed mid-run leaves its semaphores to multiprocessing's resource tracker (started with the first one, the
    # results queue's), whose warnings would follow the launcher's one line
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [warnings, "ignore::UserWarning:multiprocessing.resource_tracker"]))
    results, lost = mp.get_context("spawn").SimpleQueue(), mp.get_context("spawn").SimpleQueue()
    try:
        logger.setLevel(logging.ERROR)  # this launcher says why it stopped the processes
        ctx = mp.start_processes(_worker, args=(fn, args, nprocs, results, lost), nprocs=nprocs, join=False,
                                 start_method="spawn")
        # Ctrl-C reaches the workers from the terminal and they stop together; SIGTERM sent to this launcher is passed on
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: [os.kill(p, signal.SIGTERM) for p in ctx.pids()])
        while not ctx.join(grace_period=30):  # after a failure, the others get 30 s to stop on their own
            pass
        return results.get() if not results.empty() else None
    except mp.ProcessExitedException as e:
        index, exit_code = e.error_index, e.exit_code
        if exit_code == LOST_GROUP:  # the group broke: one line for the node
            line = "" if lost.empty() else lost.get()
            died = [(i, p.exitcode) for i, p in enumerate(ctx.processes) if (p.exitcode or 0) < 0]
            if not died or re.search(r"timed? ?out", line, re.I):  # a rank elsewhere, or one that hung (and was killed)
                raise Failure(line, LOST_GROUP) from None
            index, exit_code = died[0]  # a process of this node died: that is why
        failed = args.node_rank * nprocs + index
        how = f"signal {_signal_name(-exit_code)}" if exit_code < 0 else f"exit code {exit_code}"
        code = exit_code if exit_code > 0 else 1
        if code in (2, 128 + signal.SIGINT, 128 + signal.SIGTERM):  # the process said why
            raise Failure(code=code) from None
        raise Failure(f"rank {failed} failed ({how}); the other processes of node {args.node_rank} were stopped",
                      code) from None
    except mp.ProcessRaisedException as e:
        failed = args.node_rank * nprocs + e.error_index
        print(e, file=sys.stderr)  # the rank's traceback
        raise Failure(f"rank {failed} failed (above); the other processes of node {args.node_rank} were stopped") from None
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        logger.setLevel(level)
        results.close()
        lost.close()
        if warnings is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = warnings


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def check_host(address):
    """A host name that does not resolve is one line now, not a rendezvous retried for the whole --dist_timeout."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as e:
        raise UserError(f"--dist_address {address!r}: the host {host!r} does not resolve ({e}): give node 0's name or "
                        f"address as every node reaches it")


def check_port(address):
    """Node 0's rank 0 serves the rendezvous on the port, on every interface: a port in use is one line now,
    rather than its peers' wait for a rendezvous that never comes."""
    port = address.rpartition(":")[2]
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--dist_address {address!r} must be host:port, with a port from 1 to 65535")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the store does: a closing connection is no user
        try:
            s.bind(("", int(port)))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(port_in_use(f"--dist_address {address}"))


def port_in_use(where):
    return f"{where}: the port is in use on this machine (another run, or another program): choose a free one"


def _worker(local_rank, fn, args, nprocs, results, lost):
    """A spawned process: fn(args) as rank node_rank x nprocs + local_rank; local rank 0 sends back what fn returns.
    The process's entry point, so the one place below main() that turns a Failure into an exit code. A rank that
    loses the process group sends its line to the launcher (`lost`), which says it once, or names the process of
    this node that died instead, if one did."""
    rank = args.node_rank * nprocs + local_rank
    try:
        args = _setup(args, rank, args.world_size * nprocs, local_rank, nprocs, f"tcp://{args.dist_address}")
        result = fn(args)
        if local_rank == 0:
            results.put(result)
    except Failure as e:
        if str(e) and (local_rank == 0 or not isinstance(e, UserError)):  # a user's mistake: once per node
            print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(e.code)
    except RuntimeError as e:
        line = lost_group(e, rank)
        if line is None:
            raise
        lost.put(line)
        sys.exit(LOST_GROUP)
    finally:
        if is_on():
            shutdown()


def lost_group(e, rank):
    """The one line for a RuntimeError by which gloo or NCCL report a dead or hung peer (DistBackendError), else None."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if not isinstance(e, dist.DistBackendError) and not re.search(r"gloo|nccl|connection|timed? ?out", first, re.I):
        return None
    return f"rank {rank} lost the process group (another rank died or hangs): {first[:300]}"


def shutdown():
    """Destroy the process group after collecting the garbage that still refers to it. Objects in reference
    cycles (a model, its hooks, pending gloo work) otherwise keep the group alive until the interpreter exits,
    where gloo aborts the process now and then ("terminate called without an active exception")."""
    gc.collect()
    dist.destroy_process_group()


def _setup(args, rank, world, local_rank, local_procs, init_method):
    """This process's device and process group; returns the flags with the device it trains on."""
    cuda = pick_device(args.device).type == "cuda"
    args = args.replace(device=f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_procs))  # no oversubscription of the cores
    try:
        dist.init_process_group("nccl" if cuda else "gloo", init_method=init_method, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=args.dist_timeout))
    except dist.DistNetworkError as e:  # the rendezvous: rank 0 serves it at the address, the others connect
        where = (f"--dist_address {args.dist_address}" if init_method.startswith("tcp") else
                 f"MASTER_ADDR:MASTER_PORT {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}")
        if "EADDRINUSE" in str(e):
            raise UserError(port_in_use(where)) from None
        raise UserError(f"{where}: the process group cannot meet there ({str(e).strip().splitlines()[0][:200]})") from None
    return args


class _Gather(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradient over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def gather(x):
    """Rows of every rank's `x`, in rank order; gradients flow back to each rank's own rows."""
    if world_size() == 1:
        return x
    return _Gather.apply(x.contiguous())


@torch.no_grad()
def gather_strided(x, total):
    """Rank r holds rows r, r+W, r+2W... of a `total`-row tensor; every rank gets all of it, in order."""
    if world_size() == 1:
        return x
    w, per_rank = world_size(), -(-total // world_size())
    padded = torch.zeros((per_rank,) + x.shape[1:], dtype=x.dtype, device=x.device)
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    return torch.stack(parts, 1).flatten(0, 1)[:total]  # row j*W + r is rank r's j-th row


def all_reduce_mean(x):
    if world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= world_size()
    return x


def all_reduce_sum(x):
    if world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


def all_reduce_max(x):
    if world_size() > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


@torch.no_grad()
def all_gather_cat(x):
    """Every rank's `x` (the same shape everywhere), concatenated in rank order; no gradient."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_to_all_rows(x):
    """`x` holds W equal blocks of rows, block s for rank s; returns (W, rows per block, ...): block r of every
    rank, in rank order, where r is this rank."""
    w = world_size()
    x = x.reshape(w, -1, *x.shape[1:])
    if w == 1:
        return x
    out = torch.empty_like(x)
    dist.all_to_all(list(out.unbind(0)), list(x.contiguous().unbind(0)))
    return out


def all_gather_object(obj):
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj):
    """Every rank's `obj`, in rank order, on rank 0 (None on the others): nothing reaches any other rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


class _Slot:
    """Where a tensor was in a structure `gather_to_0` sends: its number, dtype and shape."""

    def __init__(self, i, dtype, shape):
        self.i, self.dtype, self.shape = i, dtype, shape


def gather_to_0(obj):
    """Every rank's `obj` (dicts, lists and tuples of tensors and small values, of one structure on every rank), in
    rank order, on rank 0; None on the others, which receive nothing. The tensors travel as their bytes through host
    memory, unpickled: rank 0 holds each rank's tensors once (pickling them would hold each three times)."""
    if world_size() == 1:
        return [obj]
    tensors = []

    def strip(x):
        if torch.is_tensor(x):
            tensors.append(x.detach().cpu().contiguous().view(-1).view(torch.uint8))
            return _Slot(len(tensors) - 1, x.dtype, tuple(x.shape))
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(strip(v) for v in x)
        return x
    skeletons = gather_object(strip(obj))
    longest = all_reduce_max(torch.tensor([len(t) for t in tensors], dtype=torch.long)).tolist()
    received = []
    for t, size in zip(tensors, longest):
        sent = t if len(t) == size else torch.cat([t, t.new_zeros(size - len(t))])  # equal sizes for the gather
        parts = [torch.empty(size, dtype=torch.uint8) for _ in range(world_size())] if is_main() else None
        dist.gather(sent, parts, dst=0, group=host_group())
        received.append(parts)
    if not is_main():
        return None

    def fill(x, r):
        if isinstance(x, _Slot):
            buffer = received[x.i][r]
            size = torch.Size(x.shape).numel() * torch.empty((), dtype=x.dtype).element_size()
            bytes_ = buffer if size == len(buffer) else buffer[:size].clone()  # (a save would keep all the padding)
            return bytes_.view(x.dtype).view(x.shape)
        if isinstance(x, dict):
            return {k: fill(v, r) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(fill(v, r) for v in x)
        return x
    return [fill(skeleton, r) for r, skeleton in enumerate(skeletons)]


_host_group = None


def host_group():
    """A process group over every rank that moves host memory (gloo): the default group's NCCL would stage each
    tensor through GPU memory. Made on first use; every rank must ask for it at the same point."""
    global _host_group
    if _host_group is None:
        _host_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return _host_group


def from_rank_0(make):
    """make() on rank 0 alone and its result on every rank: the others wait for it rather than repeat it. The result
    is a tuple of small picklable values and of tensors or numpy arrays of any size, which travel as they are. A
    Failure raised by make() is raised on every rank."""
    if world_size() == 1:
        return make()
    result = header = None  # the header: what each part of the result is, or rank 0's failure
    if is_main():
        try:
            result = make()
            header = [("tensor", x.dtype, tuple(x.shape)) if torch.is_tensor(x) else ("array", x.dtype, x.shape)
                      if isinstance(x, np.ndarray) else ("value", x) for x in result]
        except Failure as e:
            header = (type(e), str(e), e.code)
    header = broadcast_object(header)
    if isinstance(header, tuple):
        kind, message, code = header
        raise kind(message, code)
    out = []
    for i, (kind, *rest) in enumerate(header):
        if kind == "value":
            out.append(rest[0])
            continue
        dtype, shape = rest
        x = result[i] if is_main() else (torch.empty(shape, dtype=dtype) if kind == "tensor" else np.empty(shape, dtype))
        if x.size if kind == "array" else x.numel():  # (a numpy array's view shares its memory: it receives in place)
            dist.broadcast((x if kind == "tensor" else torch.from_numpy(x)).contiguous(), src=0, group=host_group())
        out.append(x)
    return tuple(out)


def broadcast(x):
    """Rank 0's tensor `x` on every rank (same shape everywhere)."""
    if world_size() > 1:
        x = x.contiguous()
        dist.broadcast(x, src=0)
    return x


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_bn_groups(world, group_size, per_node):
    """The rank lists SyncBatchNorm synchronises over: -1 one group per node, 0 one global group, G consecutive ranks."""
    size = {-1: per_node, 0: world}.get(group_size, group_size)
    if size <= 0 or world % size:
        raise UserError(f"--sync_bn_group_size {group_size} gives groups of {size}, which do not divide the {world} processes")
    return [list(range(lo, lo + size)) for lo in range(0, world, size)]


def convert_sync_bn(module, group_size, per_node):
    """Every BatchNorm of `module` becomes torch.nn.SyncBatchNorm over this rank's group."""
    groups = sync_bn_groups(world_size(), group_size, per_node)
    mine = None
    for ranks in groups:  # every rank must create every group, in the same order
        group = dist.new_group(ranks) if len(groups) > 1 else None
        if rank() in ranks:
            mine = group
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group=mine)
