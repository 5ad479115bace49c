"""Run a sweep's runs: here one after another or N at once, or as SLURM jobs through submitit. Each run is the
training `mimkit pretrain` (+ `mimkit finetune`) would do, called through the training API in the worker process
(the command line is written to the run's log and printed by --dry-run), so a finished run is skipped, an
interrupted one resumes from its checkpoint, and a failed one is reported with its log without stopping the others.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

from mimkit.engine.atomic import atomic_write_text
from mimkit.errors import ConfigError
from mimkit.scaling.grid import Sweep, SweepRun, TrainStep

LAUNCHERS = ("local", "slurm", "submitit-local")


def run_status(run: SweepRun) -> str:
    """done | finetune (pretrained, fine-tune missing) | resume (checkpoints, not finished) | new."""
    pretrained = (run.run_dir / "results.json").is_file()
    if pretrained:
        if run.finetune_dir is None or (run.finetune_dir / "results.json").is_file():
            return "done"
        return "finetune"
    return "resume" if (run.run_dir / "checkpoints").is_dir() else "new"


def pending_steps(sweep: Sweep, run: SweepRun) -> list[TrainStep]:
    """What is left to do for this run: nothing when done, only the fine-tune once pretrained."""
    steps = sweep.steps(run)
    return {"done": [], "finetune": steps[1:]}.get(run_status(run), steps)


def pending_commands(sweep: Sweep, run: SweepRun) -> list[list[str]]:
    """pending_steps as `mimkit` argument lists."""
    return [step.argv() for step in pending_steps(sweep, run)]


def shell_line(args: list[str]) -> str:
    return shlex.join(["mimkit", *args])


def run_step(step: TrainStep) -> int:
    """One training, in this process, through the API; its exit code as `mimkit COMMAND` would give it."""
    from mimkit.config import load_config
    from mimkit.outcome import training_exit_code
    from mimkit.training import pretrain

    def train() -> dict[str, Any]:
        return pretrain(load_config(step.config, step.config_overrides()), step.out)

    return training_exit_code(train, "run the sweep again to resume", catch_user_errors=True)


def execute(
    steps: list[TrainStep], log_path: str, threads: int | None = None, stop_file: str | None = None
) -> dict[str, Any]:
    """Run trainings in order in this process, their output appended to `log_path`; stop at the first failure.
    Returns {ok, seconds, failed (the command line), returncode}. Runs inside a worker process (local launcher) or
    a submitit job, so importing torch and timm is paid once per worker, not once per training."""
    import contextlib
    import traceback

    from mimkit.engine.lanes import start_lane

    start_lane(threads)
    rank = _export_submitit_distributed()
    if rank:
        log_path = f"{log_path}.rank{rank}"  # every task of a multi-task job runs the commands (DDP)
    t0 = time.time()
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as log:
        for step in steps:
            line = shell_line(step.argv())
            if stop_file and Path(stop_file).exists():  # the sweep is stopping: start nothing new
                return {
                    "ok": False,
                    "seconds": time.time() - t0,
                    "failed": "sweep stopped before " + line,
                    "returncode": 143,
                }
            log.write(f"\n$ {line}\n")
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                try:
                    code = run_step(step)
                except KeyboardInterrupt:
                    print("mimkit: interrupted", file=sys.stderr)
                    code = 130
                except Exception:  # noqa: BLE001 - a crashed run is reported and the sweep goes on
                    traceback.print_exc()
                    code = 1
            if code != 0:
                return {"ok": False, "seconds": time.time() - t0, "failed": line, "returncode": code}
    return {"ok": True, "seconds": time.time() - t0}


def _export_submitit_distributed() -> int:
    """Inside a submitit job with several tasks (slurm `tasks_per_node` > 1): export the torchrun-style variables
    (RANK, WORLD_SIZE, MASTER_ADDR, ...) that mimkit's DDP set-up reads, and return this task's rank; else 0."""
    try:
        import submitit
        from submitit.helpers import TorchDistributedEnvironment

        job = submitit.JobEnvironment()
    except (ImportError, RuntimeError):
        return 0  # not a submitit job
    if job.num_tasks <= 1:
        return 0
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return job.global_rank


def _log_path(run: SweepRun) -> str:
    return str(run.run_dir.parent / f"{run.run_id}.log")


def run_local(sweep: Sweep, todo: list[SweepRun], parallel: int, say: Callable[[str], None]) -> list[str]:
    """Run `todo` in `parallel` worker processes (CPU threads split between them); returns the ids that failed.
    When a worker dies (killed, out of memory) the pool cannot say whose run killed it: every unfinished run goes
    again in a fresh pool (resuming from its checkpoint), and a run caught in MAX_TRIES broken pools fails."""
    from concurrent.futures.process import BrokenProcessPool

    from mimkit.engine.lanes import completed_or_stopped, lane_threads, spawn_pool

    threads = lane_threads(parallel)
    stop_file = sweep.out / ".stopping"
    stop_file.unlink(missing_ok=True)
    failed, t0, done, left = [], time.time(), 0, list(todo)
    tries = {run.run_id: 0 for run in todo}
    while left:
        broken = False
        with spawn_pool(parallel) as pool:
            futures = {
                pool.submit(execute, pending_steps(sweep, run), _log_path(run), threads, str(stop_file)): run
                for run in left
            }
            for future in completed_or_stopped(futures, pool, stop_file):
                run = futures[future]
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    broken = True
                    break
                left.remove(run)
                done += 1
                elapsed = time.time() - t0
                eta = elapsed / done * (len(todo) - done)
                if outcome["ok"]:
                    say(
                        f"[sweep] {done}/{len(todo)} {run.run_id} finished in {outcome['seconds']:.0f} s "
                        f"(elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min)"
                    )
                else:
                    failed.append(run.run_id)
                    say(
                        f"[sweep] {done}/{len(todo)} {run.run_id} FAILED (exit {outcome['returncode']}) in: "
                        f"{outcome['failed']}; log: {_log_path(run)}"
                    )
        if broken:
            for run in list(left):
                tries[run.run_id] += 1
                if tries[run.run_id] >= MAX_TRIES:
                    left.remove(run)
                    done += 1
                    failed.append(run.run_id)
                    say(
                        f"[sweep] {run.run_id} FAILED: a worker process died {MAX_TRIES} times while it was "
                        f"pending or running; log: {_log_path(run)}"
                    )
            if left:
                say(f"[sweep] a worker process died; {len(left)} unfinished run(s) go again in a fresh pool")
    return failed


MAX_TRIES = 3


def submitit_executor(sweep: Sweep, launcher: str):
    """submitit's SLURM executor with the sweep's `slurm:` parameters, or its local executor (same code path, for
    tests and single machines)."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher slurm needs submitit: pip install submitit") from None
    folder = sweep.out / "submitit" / "%j"
    if launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder)
        params = {k: v for k, v in sweep.slurm.items() if k in ("timeout_min", "gpus_per_node", "cpus_per_task")}
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = dict(sweep.slurm)
    params.setdefault("timeout_min", 24 * 60)
    try:
        executor.update_parameters(**params)
    except Exception as err:  # noqa: BLE001 - submitit raises NameError/AssertionError/TypeError for bad keys
        raise ConfigError(
            f"slurm: {err} (keys are submitit's, e.g. slurm_partition, gpus_per_node, tasks_per_node, "
            "timeout_min, slurm_additional_parameters)"
        ) from None
    return executor


# Job states that mean "leave it alone": queued, running, or unknown (sacct briefly unreachable reads UNKNOWN;
# submitting again would put two jobs in one run directory).
ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "READY",
    "PREEMPTED",
    "UNKNOWN",
}


def _jobs_file(sweep: Sweep) -> Path:
    return sweep.out / "jobs.json"


def active_jobs(sweep: Sweep, launcher: str) -> dict[str, str]:
    """Runs whose submitted job is still queued or running (from jobs.json), so a re-run does not submit twice."""
    path = _jobs_file(sweep)
    if not path.is_file():
        return {}
    recorded = json.loads(path.read_text())
    active = {}
    try:
        import submitit
    except ImportError:
        return {}
    for run_id, job_id in recorded.items():
        job_cls = submitit.LocalJob if launcher == "submitit-local" else submitit.SlurmJob
        try:
            state = job_cls(sweep.out / "submitit" / "%j", job_id).state
        except Exception:  # noqa: BLE001 - an unknown job (purged from the scheduler) is not active
            continue
        if state.upper() in ACTIVE_STATES:
            active[run_id] = f"{job_id} ({state})"
    return active


def run_submitit(
    sweep: Sweep, todo: list[SweepRun], launcher: str, wait: bool, say: Callable[[str], None]
) -> list[str]:
    """One job per run; jobs.json records run -> job id. With `wait`, block until all end; returns failed ids."""
    executor = submitit_executor(sweep, launcher)
    busy = active_jobs(sweep, launcher)
    todo = [run for run in todo if run.run_id not in busy]
    for run_id, job_id in busy.items():
        say(
            f"[sweep] {run_id}: job {job_id} is queued, running or unknown to the scheduler, not submitted again "
            f"(if it is gone, delete its entry from {_jobs_file(sweep)})"
        )
    path = _jobs_file(sweep)
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    jobs = {}
    sweep.out.mkdir(parents=True, exist_ok=True)
    for run in todo:
        job = executor.submit(execute, pending_steps(sweep, run), _log_path(run))
        jobs[run.run_id] = job
        recorded[run.run_id] = str(job.job_id)
        atomic_write_text(path, json.dumps(recorded, indent=1))  # after each: a failed submit loses no job id
        say(f"[sweep] {run.run_id}: submitted job {job.job_id}")
    if not wait:
        say(f"[sweep] {len(jobs)} job(s) submitted; run the same command again when they end to collect results")
        return []
    failed = []
    for run_id, job in jobs.items():
        try:
            outcome = job.result()
        except Exception as err:  # noqa: BLE001 - a job killed by the scheduler raises here
            outcome = {"ok": False, "failed": str(err).splitlines()[0] if str(err) else repr(err)}
        if not outcome["ok"]:
            failed.append(run_id)
            say(f"[sweep] {run_id} FAILED: {outcome['failed']}")
    return failed
