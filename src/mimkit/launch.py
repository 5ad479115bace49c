"""`python -m mimkit.launch`: torchrun, with a signal's exit status. It takes torchrun's own arguments
(`python -m mimkit.launch --nproc_per_node=8 -m mimkit pretrain ...`) and runs torch.distributed.run in this
process. The difference: when the launcher itself receives SIGTERM (a scheduler's pre-emption) or SIGINT, torchrun
forwards it to the ranks, which save a checkpoint and exit 143 / 130, and then reports exit status 1 with a
traceback; this launcher exits 143 / 130 with one line, so a scheduler sees a pre-empted job, not a crash. When a
rank fails, it exits with that rank's status (2 for an input error, 75 when a peer was lost, ...) instead of 1."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(sys.argv[1:] if argv is None else argv)
    except ChildFailedError as failed:  # torchrun has printed which rank failed; exit with that rank's status
        _, first = failed.get_first_failure()
        return first.exitcode if first.exitcode > 0 else 128 - first.exitcode
    except SignalException as stop:
        print(
            f"mimkit.launch: {stop.sigval.name} received and forwarded to every rank (each saves a checkpoint); "
            "re-run the same command to resume",
            file=sys.stderr,
        )
        return 128 + int(stop.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
