"""The README's short tour is copy-pasteable: every line parses with mimkit's own command line, so a renamed flag or
command fails here without running anything (scripts/readme_tour.py runs and times the tour itself)."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest

from mimkit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_tour", ROOT / "scripts" / "readme_tour.py")
readme_tour = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_tour)

COMMANDS = readme_tour.tour_commands()


def test_the_tour_is_found_and_joined():
    assert len(COMMANDS) >= 20 and all(c.startswith("mimkit ") for c in COMMANDS), COMMANDS
    assert not any(c.endswith("\\") or "#" in c for c in COMMANDS)  # continuations joined, comments dropped


@pytest.mark.parametrize("command", COMMANDS, ids=range(1, len(COMMANDS) + 1))
def test_every_tour_line_parses(command):
    try:
        build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as stop:
        pytest.fail(f"README tour line does not parse (exit {stop.code}): {command}")


def test_the_parser_check_can_fail():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--config", "mae_fmnist_tiny", "--no-such-flag"])
