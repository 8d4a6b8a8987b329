"""Every random stream is seeded by one helper, from --seed, the stream's name and its position."""
import os
import subprocess
import sys
import types

import numpy as np
import torch

from conftest import ROOT
from models.base import Method
from utils import checkpoint, seeds


def test_a_seed_depends_on_the_seed_the_name_and_the_position_alone():
    a = seeds.seed_of(0, "order", 3)
    assert a == seeds.seed_of(0, "order", 3) and 0 <= a < 2 ** 63
    others = {seeds.seed_of(1, "order", 3), seeds.seed_of(0, "crops", 3), seeds.seed_of(0, "order", 4),
              seeds.seed_of(0, "order", 3, 0)}
    assert a not in others and len(others) == 4
    assert seeds.seed_of(0, "order", torch.tensor(3)) == seeds.seed_of(0, "order", np.int64(3)) == a
    assert torch.equal(torch.rand(5, generator=seeds.generator(0, "order", 3)),
                       torch.rand(5, generator=torch.Generator().manual_seed(a)))


def test_a_seed_is_the_same_in_another_process_with_other_string_hashing():
    code = "from utils import seeds; print(seeds.seed_of(7, 'crops', 2, 'x'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONHASHSEED="123"),
                         capture_output=True, text=True, check=True).stdout
    assert int(out) == seeds.seed_of(7, "crops", 2, "x")


def test_a_methods_generators_are_keyed_by_name_not_by_creation_order():
    def states(names):
        problem = Method(types.SimpleNamespace(seed=3), "cpu")
        for name in names:
            problem.generator(name)
        return problem, {name: g.get_state() for name, g in problem.generators.items()}
    problem, first = states(["augment", "negatives"])
    _, second = states(["negatives", "augment"])
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["augment"], first["negatives"])
    checkpoint.reseed(problem.generators, 3, 100)  # a resume on another number of processes: fresh streams, fixed by the resume step
    resumed = {name: g.get_state() for name, g in problem.generators.items()}
    assert not any(torch.equal(first[k], resumed[k]) for k in first)
    checkpoint.reseed(problem.generators, 3, 100)
    assert all(torch.equal(resumed[k], g.get_state()) for k, g in problem.generators.items())
