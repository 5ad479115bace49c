"""Every option of every command has help text, and the help shows its default (issue 22: one vocabulary, help
with defaults)."""

from __future__ import annotations

import argparse

from mimkit.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, name: str = "mimkit"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_option_has_help_and_shows_its_default():
    missing, no_default = [], []
    for name, parser in _parsers(build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or "-h" in action.option_strings:
                continue
            if not action.help:
                missing.append(f"{name} {action.option_strings[0]}")
            elif action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in (
                parser._get_formatter()._expand_help(action)
            ):
                no_default.append(f"{name} {action.option_strings[0]}")
        assert "%(default)" not in text
    assert missing == [], f"options without help: {missing}"
    assert no_default == [], f"options whose help hides the default: {no_default}"


def test_a_default_is_printed_once():
    parser = dict(_parsers(build_parser()))["mimkit finetune"]
    text = " ".join(parser.format_help().split())
    assert text.count("finetune_fmnist_tiny") == 1 and "(default: finetune_fmnist_tiny)" not in text


def test_one_vocabulary_across_commands():
    """--init names a weight source on every command that takes one (analyze's --model is the same flag), and
    --data is on every command that reads data."""
    parser = build_parser()
    args = parser.parse_args(["analyze", "cka", "--init", "a=scratch", "--model", "b=scratch", "--out", "x"])
    assert args.model == ["a=scratch", "b=scratch"]
    readers = {
        "pretrain": ["--config", "mae_fmnist_tiny", "--out", "x"],
        "finetune": ["--init", "scratch", "--out", "x"],
        "distill": ["--teacher", "t", "--out", "x"],
        "linprobe": ["--init", "scratch", "--out", "x"],
        "knn": ["--init", "scratch", "--out", "x"],
        "compare": ["--init", "scratch", "--out", "x"],
        "analyze": ["cka", "--out", "x"],
    }
    for command, rest in readers.items():
        assert parser.parse_args([command, *rest, "--data", "synthetic"]).data == "synthetic", command
    for bench in ("pretrain", "loader"):
        assert parser.parse_args(["bench", bench, "--config", "c", "--data", "synthetic"]).data == "synthetic"


def test_pretrain_data_flag_reaches_the_config(tmp_path):
    from conftest import TINY
    from mimkit.cli import main

    tiny = [o for o in TINY if not o.startswith("data.name=")]
    argv = ["pretrain", "--config", "mae_fmnist_tiny", "--data", "synthetic", "--steps", "2"]
    for override in [*tiny, "train.eval_samples=16"]:
        argv += ["--set", override]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert "name: synthetic" in (tmp_path / "run" / "config.yaml").read_text()
