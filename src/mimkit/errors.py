"""The errors a user can fix: bad config, missing data, a corrupt checkpoint, an unreadable import. Each is a
UserError, which the CLI and the demo report in one line, without a traceback, exiting with code 2. They live apart
from the config module so that data, models, methods and distillation can raise them without importing the config
that validates them."""

from __future__ import annotations

from typing import Callable


class UserError(Exception):
    """Base of every error the user can fix (mixed into the standard exception each one also is)."""


class ConfigError(UserError, ValueError):
    """A config problem the user can fix; the CLI prints it without a traceback and exits with code 2."""


def check(cond: bool, message: str) -> None:
    """Validation: raise ConfigError(message) unless `cond` holds."""
    if not cond:
        raise ConfigError(message)


def one_of(key: str, value: object, choices: list) -> None:
    """Validation: `value` of config key `key` must be one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(map(str, choices))}")


class NonFiniteLossError(RuntimeError):
    """Training stopped after too many non-finite steps in a row (exit code 3); the last clean checkpoint is kept."""


class Terminated(KeyboardInterrupt):
    """SIGTERM to a process that runs trainings in worker processes (a sweep's --parallel, compare's --lanes): the
    workers were stopped; the CLI exits 143, as a training stopped by SIGTERM does."""


class Interrupted(Exception):
    """Raised after a signal: the checkpoint is saved and the process should exit with `exit_code`."""

    def __init__(self, signame: str, exit_code: int, step: int, saved: bool = True):
        super().__init__(
            f"{signame} received: checkpoint saved at step {step}"
            if saved
            else f"{signame} received at step {step}, during a run of non-finite steps: no checkpoint saved, the last "
            "clean one is kept"
        )
        self.exit_code = exit_code
        self.step = step


# Exit codes of the CLI and the demo (docs/reliability.md): 0 done; 2 an input the user can fix (config, data,
# checkpoint, output path, memory); 3 stopped after too many non-finite steps; 70 an internal error (a bug, or an
# input mimkit does not check yet); 74 the operating system refused a read or write (disk full, read-only file
# system, permissions); 75 another rank of a torchrun job stopped, crashed or hung (a collective timed out or lost its
# peer); 130 / 143 interrupted by SIGINT / SIGTERM after saving a checkpoint.
EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_INTERNAL, EXIT_IO, EXIT_PEER = 2, 3, 70, 74, 75
# how gloo and nccl word a lost peer (gloo says "Application timeout caused pair closure" when its own timeout
# closes the connection to a rank that stopped answering)
PEER_FAILURES = (
    "timed out",
    "timeout caused pair closure",
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
)
DEBUG_HINT = "re-run with --debug (or MIMKIT_DEBUG=1) for the traceback"


def exit_code_of(command: Callable[[], int], debug: bool = False) -> int:
    """Run a command and turn every failure into one line on stderr and an exit code; no traceback unless `debug`
    (or MIMKIT_DEBUG=1), when it is printed above the line."""
    import os
    import sys
    import traceback

    debug = debug or os.environ.get("MIMKIT_DEBUG", "") not in ("", "0")

    def report(line: str, code: int) -> int:
        if debug:
            traceback.print_exc()
        # printable whatever the message holds (a path of non-UTF-8 bytes arrives as surrogates)
        line = line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        print(f"mimkit: {line}", file=sys.stderr)
        return code

    try:
        return command()
    except UserError as err:
        return report(f"error: {err}", EXIT_BAD_INPUT)
    except Interrupted as stop:  # a signal during a command that trains (compare, sweep steps, chains, ...)
        return report(f"{stop}; re-run the same command to resume", stop.exit_code)
    except NonFiniteLossError as err:
        return report(str(err), EXIT_NONFINITE)
    except Terminated:
        return report("terminated (SIGTERM): re-run the same command to resume", 143)
    except KeyboardInterrupt:
        return report("interrupted", 130)
    except MemoryError:
        return report(f"error: out of memory; lower train.batch_size or data.img_size ({DEBUG_HINT})", EXIT_BAD_INPUT)
    except OSError as err:
        return report(f"error: {describe_os_error(err)}", EXIT_IO)
    except Exception as err:  # noqa: BLE001 - the last line of defence: a message, not a traceback
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if in_process_group() and any(s in text.lower() for s in PEER_FAILURES):
            return report(
                f"error: a collective with the other ranks failed ({text[:200]}): another rank stopped, crashed or "
                "hangs; its own log says why (train.dist_timeout sets how long a rank waits)",
                EXIT_PEER,
            )
        if "out of memory" in text.lower() or "can't allocate memory" in text.lower():
            return report(
                f"error: out of memory ({text[:160]}); lower train.batch_size or data.img_size", EXIT_BAD_INPUT
            )
        return report(
            f"internal error: {type(err).__name__}: {text[:300]}. A bug in mimkit, or an input it does not check "
            f"yet: {DEBUG_HINT} and report it",
            EXIT_INTERNAL,
        )


def in_process_group() -> bool:
    """Whether this process joined a torch.distributed group (without importing torch when it is not loaded)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def describe_os_error(err: OSError) -> str:
    """One line for an OSError: what failed, where, and what to do about the usual causes."""
    import errno

    where = f" '{err.filename}'" if err.filename else ""
    reason = err.strerror or str(err)
    advice = {
        errno.ENOSPC: "free some space and re-run the same command: training resumes from the last checkpoint, "
        "which a failed write never replaces",
        errno.EDQUOT: "free some space (disk quota) and re-run the same command to resume",
        errno.EROFS: "the file system is read-only: choose another --out",
        errno.EACCES: "check the permissions, or choose another path",
        errno.EPERM: "check the permissions, or choose another path",
    }.get(err.errno, DEBUG_HINT)
    return f"{reason}{where}: {advice}"
