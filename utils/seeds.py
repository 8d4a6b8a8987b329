"""Every random stream of a run is seeded here, from --seed and the stream's name.

Bit-exact resume needs each seed to depend on nothing but --seed, the stream's name and where the stream starts
(rank, epoch, image, step): not on the order streams are created in, the number of workers, the process or its
string-hash randomisation. A stream that runs on across steps (a problem's generators) is saved in the checkpoint
and seeded here only at a fresh start, or afresh on a resume with another number of processes.
"""
import hashlib

import torch


def seed_of(seed, name, *where):
    """A 63-bit seed of stream `name` at position `where` (ints or strings) under --seed `seed`: the same in every
    process and Python version, and distinct for distinct (seed, name, where) but by a 2**-63 chance."""
    key = (int(seed), str(name)) + tuple(w if isinstance(w, str) else int(w) for w in where)
    return int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little") >> 1


def generator(seed, name, *where, device="cpu"):
    """A torch.Generator on `device` seeded with seed_of(seed, name, *where)."""
    return torch.Generator(device).manual_seed(seed_of(seed, name, *where))
