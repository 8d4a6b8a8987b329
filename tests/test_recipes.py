"""The published recipes stay published: every value tools/recipes.py lists for a config (defaults included) is what
the config resolves to, every code-path row with a pin holds in this repo's code, each config's header names its
source and probe and says every difference, and docs/recipes.md is the table's rendering."""
import glob
import os

import pytest

import train
from tools import recipes
from utils.config import parse_args

ALL = recipes.RECIPES + recipes.PROBES
IDS = [os.path.basename(r["config"]) for r in ALL]


def same(here, expected):
    if isinstance(expected, float) and isinstance(here, (int, float)):
        return here == pytest.approx(expected, rel=1e-9, abs=1e-12)
    if isinstance(expected, list) and isinstance(here, (list, tuple)):
        return len(here) == len(expected) and all(same(h, e) for h, e in zip(here, expected))
    return here == expected


@pytest.mark.parametrize("recipe", ALL, ids=IDS)
def test_the_config_resolves_to_the_sources_values(recipe):
    values = recipes.effective(recipe["config"])
    wrong = {flag: (values[flag], expected) for flag, expected, *_ in recipe["rows"] if not same(values[flag], expected)}
    assert not wrong, f"{recipe['config']}: (here, the table's) {wrong}"
    flags = [row[0] for row in recipe["rows"]]
    assert len(flags) == len(set(flags)), "a flag listed twice"


@pytest.mark.parametrize("recipe", ALL, ids=IDS)
def test_the_code_paths_pinned_hold_here(recipe):
    args = parse_args(["--config", os.path.join(recipes.ROOT, recipe["config"])], train.PROBLEMS)
    failed = [row[0] for row in recipe["code"] if len(row) > 5 and not row[5](args)]
    assert not failed, f"{recipe['config']}: these code-path rows no longer hold: {failed}"
    assert all(len(row) in (5, 6) for row in recipe["code"])


@pytest.mark.parametrize("recipe", ALL, ids=IDS)
def test_the_header_names_the_source_and_the_probe(recipe):
    header = "".join(line for line in open(os.path.join(recipes.ROOT, recipe["config"])) if line.startswith("#"))
    source_file = recipe["source"].split(", ")[1]
    assert source_file.split("/")[-1] in header
    if "probe" in recipe:
        assert recipe["probe"] in header and os.path.exists(os.path.join(recipes.ROOT, recipe["probe"]))
    if any(row[4] for row in recipe["rows"] + recipe["code"]):
        assert "Differences" in header  # the differences the tables note are said in the config too


def test_every_imagenet_pretraining_config_has_its_table():
    configs = {os.path.relpath(p, recipes.ROOT) for p in glob.glob(os.path.join(recipes.ROOT, "configs", "imagenet_*.yaml"))}
    probes = {"configs/imagenet_eval.yaml", "configs/imagenet_eval_vissl.yaml", "configs/imagenet_eval_simclr_pytorch.yaml",
              "configs/imagenet_finetune.yaml"}
    assert configs - probes == {r["config"] for r in recipes.RECIPES}


def test_docs_recipes_is_the_tables_rendering():
    body = open(recipes.DOC).read()
    assert body.split(recipes.BEGIN, 1)[1].split(recipes.END, 1)[0] == "\n" + recipes.render()
