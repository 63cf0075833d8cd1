"""`visualprm COMMAND --help` of every command (those added later included, found by walking the parser): every
option that takes a value and has a default shows it, every command has a description, and `train`'s options are
exactly `TrainConfig`'s fields (generated from them)."""

import argparse
import dataclasses
import subprocess
import sys

import pytest

from visualprm.cli import build_parser
from visualprm.cli_common import add_config_options, config_option, shows_default, subcommand_parsers
from visualprm.train import TrainConfig, load_config

COMMANDS = subcommand_parsers(build_parser())


def _flat(text: str) -> str:
    return " ".join(text.split())  # argparse wraps lines; compare with single spaces


def test_the_walk_finds_the_commands():
    assert {"score", "bon", "bench", "train", "annotate", "make-synthetic", "demo", "make-tiny-model"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_default_is_in_the_help(name):
    p = COMMANDS[name]
    text = _flat(p.format_help())
    assert p.description, f"`visualprm {name}` has no description"
    checked = 0
    for a in p._actions:
        assert a.help, f"{name} {a.option_strings or a.dest} has no help"
        if not shows_default(a):
            continue
        default = a.default
        assert _flat(f"(default: {default})") in text, f"{name} {a.option_strings[0]}: default {default!r} not shown"
        own = _flat(p._get_formatter()._expand_help(a))  # and it is this option's help that says it
        assert own.endswith(f"(default: {default})") or f"{default}" in own, (name, a.option_strings, own)
        assert own.count("(default") == 1, f"{name} {a.option_strings[0]} says its default twice: {own}"
        checked += 1
    if name == "train":  # its options default to None (a config file may set them): the field's default is shown
        for f in dataclasses.fields(TrainConfig):
            if f.default not in ("", None):
                assert f"{config_option(f)}" in text
                shown = "".join(f"(default: {f.default})".split())  # a long default may wrap anywhere
                assert shown in "".join(text.split()), f"train {config_option(f)}: {f.default!r} not shown"
    elif name in ("score", "bon", "bench", "serve", "annotate", "search"):
        assert checked >= 3  # the check above ran on real options


def test_defaults_listed_in_the_issue_are_shown():
    want = {
        "score": ["--max-steps", "--max-length"],
        "bon": ["--seed"],
        "annotate": ["--prompt"],
        "search": ["--prompt"],
        "serve": ["--split-steps", "--log-level"],
        "make-tiny-model": ["--seed"],
    }
    for name, opts in want.items():
        acts = {o: a for a in COMMANDS[name]._actions for o in a.option_strings}
        for o in opts:
            a = acts[o]
            if a.default is None:  # no default to show: its help must say what happens without it
                assert a.help and len(a.help) > 10, (name, o)
            else:
                assert shows_default(a), (name, o)
    text = _flat(COMMANDS["train"].format_help())
    assert "--save-steps SAVE_STEPS checkpoint every N optimizer steps (default: 500)" in text
    assert "(default: 10)" in text  # --logging-steps


@pytest.mark.parametrize("name", ["annotate", "search"])
def test_policy_help_lists_every_form(name):
    (a,) = [a for a in COMMANDS[name]._actions if "--policy" in a.option_strings]
    for form in ("synthetic ", "synthetic:perception=", "hf:PATH", "vllm:PATH_OR_ID", "openai:MODEL@URL"):
        assert form in a.help, form
    assert "py:MODULE:FACTORY" in a.help


def test_train_options_are_the_config_fields():
    p = COMMANDS["train"]
    dests = {a.dest for a in p._actions if a.option_strings} - {"help", "config", "quiet"}  # --quiet: every command
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert dests == fields  # every field has an option and every option is a field
    for f in dataclasses.fields(TrainConfig):
        (a,) = [a for a in p._actions if a.dest == f.name]
        assert config_option(f) in a.option_strings and a.default is None
    # the option names the earlier hand-written parser had are all still there
    old = "--data --model --out --eval-data --eval-split --image-root --label-mode --label-loss --epochs --max-steps"
    old += " --lr --batch-size --grad-accum --max-length --seed --save-steps --save-total-limit --logging-steps"
    old += " --eval-steps --torch-dtype --limit --deepspeed --num-workers --torch-threads --lora-r --lora-alpha --lora"
    old += (
        " --full --bf16 --gradient-checkpointing --train-eot --no-soft-labels --drop-long --no-preencode --overwrite"
    )
    names = {o for a in p._actions for o in a.option_strings}
    assert set(old.split()) <= names


def _train_overrides(argv):
    a = build_parser().parse_args(["train", *argv])
    return {k: v for k, v in vars(a).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}


def test_train_options_parse_and_override_the_config_file(tmp_path):
    ov = _train_overrides(["--no-soft-labels", "--lora", "--lr", "2e-5", "--batch-size", "3", "--label-mode", "value"])
    given = {k: v for k, v in ov.items() if v is not None}
    assert given == {"soft_labels": False, "lora": True, "lr": 2e-5, "batch_size": 3, "label_mode": "value"}
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data: d.jsonl\nmodel: m\nout: o\nlr: 3.0e-4\nlora: true\nweight_decay: 0.1\nseed: 7\n")
    cfg = load_config(str(yaml_file), _train_overrides(["--no-lora", "--seed", "9"]))
    assert (cfg.lr, cfg.lora, cfg.weight_decay, cfg.seed, cfg.batch_size) == (3e-4, False, 0.1, 9, 1)
    cfg = load_config(str(yaml_file), _train_overrides(["--weight-decay", "0.2"]))  # a field new on the CLI
    assert (cfg.weight_decay, cfg.lora, cfg.seed) == (0.2, True, 7)


@pytest.mark.parametrize("argv", [["--batch-size", "0"], ["--label-mode", "soft"], ["--lr", "x"]])
def test_train_bad_option_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", *argv])
    assert e.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_generated_options_follow_the_fields():
    @dataclasses.dataclass
    class Cfg:
        n_items: int = dataclasses.field(default=3, metadata={"help": "items", "min": 1})
        rate: float = dataclasses.field(default=0.5, metadata={"help": "a 50% rate"})
        on: bool = dataclasses.field(default=True, metadata={"help": "switch"})
        name: str = dataclasses.field(default="", metadata={"help": "a name", "choices": ("", "a", "b")})

    p = argparse.ArgumentParser(formatter_class=argparse.HelpFormatter)
    add_config_options(p, Cfg)
    assert vars(p.parse_args([])) == {"n_items": None, "rate": None, "on": None, "name": None}
    assert vars(p.parse_args(["--n-items", "2", "--rate", "1", "--no-on", "--name", "b"])) == {
        "n_items": 2,
        "rate": 1.0,
        "on": False,
        "name": "b",
    }
    with pytest.raises(SystemExit):
        p.parse_args(["--n-items", "0"])
    text = _flat(p.format_help())
    assert "items (default: 3)" in text and "a 50% rate (default: 0.5)" in text and "switch (default: True)" in text


def test_help_runs_for_every_command():
    for name in ("train", "annotate"):
        proc = subprocess.run([sys.executable, "-m", "visualprm", name, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "(default: " in proc.stdout, proc.stderr
