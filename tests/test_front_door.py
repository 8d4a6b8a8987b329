"""The front door: a config means what the same values on the command line mean, and whatever a user or a script
types, YAML or flags, either parses to a valid run or is refused in one line. The fuzz tests generate the input
(Hypothesis) instead of guessing it."""
import argparse
import math
import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import train
from utils import runlog
from utils.config import Range, build_parser, parse_args, run_flags, str2bool
from utils.errors import UserError


def parse_config(tmp_path, text, *argv):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return parse_args(["--config", str(path), "--root", str(tmp_path / "logs")] + list(argv), train.PROBLEMS)


REFUSED = {
    "a repeated key": ("lr: 0.1\nlr: 0.2\n", "key 'lr' is given twice (lines 1 and 2)"),
    "a repeated key inside a value": ("lr: 0.1\nx: {a: 1, a: 2}\n", "key 'a' is given twice"),
    "a YAML boolean for a number": ("lr: true\n", "config key 'lr': true is a YAML boolean"),
    "a YAML boolean for a count": ("iters: no\n", "config key 'iters': false is a YAML boolean"),
    "a YAML boolean for a name": ("name: yes\n", "config key 'name': true is a YAML boolean"),
    "a YAML boolean in a list": ("size_crops: [20, true]\n", "config key 'size_crops': true is a YAML boolean"),
    "a null for a number": ("lr: null\n", "config key 'lr': null is not a value of --lr; leave the key out"),
    "a null for a list with a default": ("head_hidden_dims: ~\n", "null is not a value of --head_hidden_dims"),
    "a null inside a list": ("size_crops: [20, null]\n", "config key 'size_crops': null is not a value"),
    "a float for a name": ("name: 1.5\n", "config key 'name': 1.5 is not a name or text"),
    "a list for a problem": ("problem: [simclr]\n", "config key 'problem'"),
    "a number for a problem": ("problem: 5\n", "unknown problem '5'"),
    "an abbreviated key": ("temp: 0.2\n", "unknown config key 'temp'"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_config_value_the_user_did_not_mean_is_refused_in_one_line(tmp_path, case):
    text, message = REFUSED[case]
    with pytest.raises(UserError) as e:
        parse_config(tmp_path, text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_null_is_the_default_of_a_flag_whose_default_is_unset(tmp_path):
    args = parse_config(tmp_path, "data_root: null\nname: ~\ncifar_stem: null\nlr_steps: null\ncolor_jitter: null\n")
    assert (args.data_root, args.name, args.cifar_stem, args.lr_steps, args.color_jitter) == (None, "", None, [], None)
    assert "None" not in (args.data_root, args.name)


def test_abbreviated_flags_are_refused_on_the_command_line_too(tmp_path):
    with pytest.raises(UserError, match="unrecognized arguments: --temp"):
        parse_args(["--temp", "0.2", "--root", str(tmp_path)], train.PROBLEMS)


def resolved(argv):
    """The flags as train.main reads them: the run that --resume names found (and locked) first."""
    return parse_args(argv, train.PROBLEMS, runlog.resumed_run(run_flags(argv)))


def test_parsing_takes_no_lock_and_its_flags_are_frozen(runs):
    argv = ["--resume", runs["pre"], "--root", runs["root"]]
    with pytest.raises(ValueError, match="resumed_run"):  # a caller that forgets to find the run is told so
        parse_args(argv, train.PROBLEMS)
    resumed = runlog.resumed_run(run_flags(argv + ["--dry_run", "true"]))  # a dry run reads, locks nothing
    assert not runlog._held
    args = parse_args(argv, train.PROBLEMS, resumed)
    assert not runlog._held and args.resume == resumed[0] and args.iters == 6
    with pytest.raises(AttributeError, match="frozen"):
        args.lr = 1.0
    assert args.replace(lr=1.0).lr == 1.0 and args.lr != 1.0


def test_the_run_flags_act_the_same_from_a_config_and_from_the_command_line(tmp_path, runs):
    flags = dict(resume=runs["pre"], root=runs["root"], dry_run=True, name="other", lock_wait=5, node_rank=0)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(flags))
    from_config = resolved(["--config", str(tmp_path / "c.yaml")])
    from_cli = resolved([f"--{k}={v}" for k, v in flags.items()])
    assert dict(vars(from_config), config=None) == vars(from_cli)
    assert from_config.resume.endswith("checkpoint.pth.tar") and from_config.iters == 6  # the resumed run's flags
    assert from_config.name == "other"


def test_resume_auto_and_name_in_a_config_continue_an_unfinished_run(tmp_path, runs):
    os.rename(os.path.join(runs["pre"], "done.yaml"), os.path.join(runs["pre"], "done.yaml.aside"))
    try:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(dict(resume="auto", name="tiny", root=runs["root"], dry_run=True)))
        args = resolved(["--config", str(tmp_path / "c.yaml")])
    finally:
        os.rename(os.path.join(runs["pre"], "done.yaml.aside"), os.path.join(runs["pre"], "done.yaml"))
    assert args.resume == os.path.join(runs["pre"], "checkpoint.pth.tar")


# ---- fuzzing: whatever comes in, a valid run or one line -------------------------------------------------------

FLAGS = sorted({a.dest for problem in train.PROBLEMS for a in build_parser(problem, train.PROBLEMS)._actions
                if a.option_strings and a.dest not in ("help", "config", "resume", "root", "lock_wait")})
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.integers(-3, 300),
                    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1), st.text(max_size=12),
                    st.sampled_from(["auto", "none", "None", "cpu", "cuda", "lars", "lbfgs", "fmnist", "1e-3", "0x10",
                                     "nan", "-inf", "１", "²", "true", "", " ", "a:b", "🙂"]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4), st.dictionaries(st.text(max_size=4), SCALARS, max_size=2))
KEYS = st.one_of(st.sampled_from(FLAGS), st.sampled_from(["problem"] * 3), st.text(max_size=10))
PROBLEM = st.sampled_from(sorted(train.PROBLEMS))


def front_door(argv, root):
    """What train.main does before training: the flags, then the launch checks. Returns the args, or the one line
    of a refusal; anything else (a traceback) fails the test."""
    try:
        args = parse_args(argv + ["--root", str(root)], train.PROBLEMS)
        train.check_launch(args)
    except UserError as e:
        assert "\n" not in str(e) and str(e).strip(), repr(str(e))
        return None
    assert not os.path.exists(root)  # parsing makes no run folder
    for action in build_parser(args.problem, train.PROBLEMS)._actions:  # every value is one its flag accepts
        value = getattr(args, action.dest, None)
        for v in value if isinstance(value, list) else [value]:
            if v is None and action.default is None:
                continue  # unset: resolved by the problem
            if isinstance(action.type, Range):
                assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), (action.dest, v)
                action.type(v)
            elif action.type is str2bool:
                assert isinstance(v, bool), (action.dest, v)
            if action.choices is not None and v is not None:
                assert v in action.choices, (action.dest, v)
    return args


FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 250)), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def test_fuzzed_configs_parse_to_a_valid_run_or_one_line(tmp_path_factory):
    cases = []

    @FUZZ
    @given(problem=PROBLEM, doc=st.one_of(st.dictionaries(KEYS, VALUES, max_size=6), LIKELY_DOC), repeat=st.booleans(),
           raw=st.text(max_size=40), use_raw=st.integers(0, 9))
    def case(problem, doc, repeat, raw, use_raw):
        folder = tmp_path_factory.mktemp("fuzz")
        doc = dict(problem=problem, **{k: v for k, v in doc.items() if k != "problem"})
        text = raw if use_raw == 0 else yaml.safe_dump(doc, allow_unicode=True)
        if repeat:
            text += yaml.safe_dump({list(doc)[-1]: 1})  # the same key again
        (folder / "c.yaml").write_text(text, encoding="utf-8")
        cases.append(front_door(["--config", str(folder / "c.yaml")], folder / "logs") is not None)
    case()
    print(f"{len(cases)} fuzzed configs, {sum(cases)} of them valid runs")
    assert len(cases) >= 50 and any(cases) and not all(cases)


def plausible(action):
    """Tokens a user might well type for this flag: its choices, booleans, or small numbers."""
    if action.choices:
        return [str(c) for c in action.choices]
    if action.type is str2bool:
        return ["true", "false"]
    return ["0", "1", "2", "3", "0.5", "-1", "1e-3", "64", "0.999"]


PLAUSIBLE = {a.dest: plausible(a) for problem in train.PROBLEMS for a in build_parser(problem, train.PROBLEMS)._actions
             if a.dest in FLAGS}
LIKELY = st.sampled_from(FLAGS).flatmap(lambda f: st.lists(st.sampled_from(PLAUSIBLE[f]), min_size=1, max_size=2)
                                        .map(lambda v: [f"--{f}"] + v))
LIKELY_DOC = st.lists(LIKELY, max_size=5).map(
    lambda pairs: {p[0][2:]: yaml.safe_load(p[1]) if len(p) == 2 else [yaml.safe_load(v) for v in p[1:]] for p in pairs})
PAIRS = st.tuples(st.sampled_from(FLAGS).map(lambda f: f"--{f}"), st.lists(SCALARS.map(str), min_size=0, max_size=3))
TOKENS = st.lists(st.one_of(LIKELY, LIKELY, PAIRS.map(lambda p: [p[0]] + p[1]), st.text(max_size=8).map(lambda t: [t])),
                  max_size=6)


def test_fuzzed_command_lines_parse_to_a_valid_run_or_one_line(tmp_path_factory):
    cases = []

    @FUZZ
    @given(problem=PROBLEM, groups=TOKENS)
    def case(problem, groups):
        tokens = [t for group in groups for t in group if t not in ("-h", "--help")]  # help exits 0, by design
        cases.append(front_door(["--problem", problem] + tokens, tmp_path_factory.mktemp("fuzz") / "logs") is not None)
    case()
    print(f"{len(cases)} fuzzed command lines, {sum(cases)} of them valid runs")
    assert len(cases) >= 50 and any(cases) and not all(cases)
