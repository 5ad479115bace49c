"""How a training ends, as a process exit code: the CLI's commands and the sweep runner's steps report the same
way (0 and the results as JSON; after a checkpointed interruption the signal's code and how to resume; 3 after too
many non-finite steps; 2 and one line for an error the user can fix)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from mimkit.errors import UserError


def training_exit_code(
    train: Callable[[], dict[str, Any] | None],
    resume_hint: str,
    catch_user_errors: bool = False,
    command: str | None = None,
    results_file: str | Path | None = None,
) -> int:
    """Run `train` and turn its outcome into an exit code (see the module docstring). The CLI reports UserError
    itself (catch_user_errors=False); the sweep runner, which runs many trainings in one process, asks for it. With
    `command`, the results are summarised in a few lines (summary.py) rather than printed whole."""
    from mimkit.errors import Interrupted, NonFiniteLossError

    try:
        results = train()
    except Interrupted as stop:
        print(f"mimkit: {stop}; {resume_hint}", file=sys.stderr)
        return stop.exit_code
    except NonFiniteLossError as err:
        print(f"mimkit: {err}", file=sys.stderr)
        return 3
    except UserError as err:
        if not catch_user_errors:
            raise
        print(f"mimkit: error: {err}", file=sys.stderr)
        return 2
    if results and command is not None:
        from mimkit.summary import report

        report(command, results, results_file or "results.json")
    elif results:
        print(json.dumps(results, indent=1))
    return 0
