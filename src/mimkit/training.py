"""`mimkit pretrain`: build data, method and Engine from a config, train, then draw curves and reconstructions."""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path
from typing import Any

import torch

from mimkit.config import Config, ConfigError, load_config, resolve_epochs, resolved, save_config
from mimkit.data.datasets import DataBundle, build_data
from mimkit.data.loader import TrainStream
from mimkit.data.transforms import RandAugmentBatch, train_augment
from mimkit.data.webdataset.shardset import ShardSet
from mimkit.data.webdataset.stream import ShardStream
from mimkit.engine.atomic import atomic_write_text
from mimkit.engine.checkpoint import CheckpointError
from mimkit.engine.distributed import DistEnv, barrier, init_distributed
from mimkit.engine.run_dir import run_dir_lock
from mimkit.engine.trainer import Engine
from mimkit.heldout import loss_evaluators
from mimkit.methods import build_method, method_spec
from mimkit.weights import Source, adopt_source, load_encoder_weights, resolve_source
from mimkit.weights.identity import same_source


def versions() -> dict[str, str]:
    import timm

    return {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()}


def build_stream(cfg: Config, data: DataBundle, env: DistEnv) -> TrainStream | ShardStream:
    d, t = cfg.data, cfg.train
    if t.batch_size % (t.accum_steps * env.world_size):
        raise ValueError(
            f"train.batch_size {t.batch_size} must be divisible by train.accum_steps ({t.accum_steps})"
            f" x processes ({env.world_size})"
        )
    augment = train_augment(cfg)
    micro = t.batch_size // (t.accum_steps * env.world_size)
    pre = RandAugmentBatch(cfg.method.randaug, d.mean, d.num_workers) if cfg.method.randaug else None
    stream = ShardStream if isinstance(data.train, ShardSet) else TrainStream  # webdataset: streamed from shards
    return stream(
        data.train,
        augment,
        micro,
        t.accum_steps,
        env.rank,
        env.world_size,
        cfg.seed,
        env.device,
        pre_augment=pre,
        views=method_spec(cfg).views,
    )


def epoch_size(train: Any, world_size: int) -> int:
    """Images one epoch of the training stream covers: the whole set, or for tar shards what every rank is dealt
    under any shard permutation (the ShardStream's epoch), so train.epochs counts the epochs the stream runs."""
    per_rank = getattr(train, "per_rank_samples", None)
    return per_rank(world_size) * world_size if per_rank is not None else len(train)


def load_data_once(cfg: Config, env: DistEnv, log=print) -> DataBundle:
    """Rank 0 first (it may decode a folder into the cache), then the others read the cache."""
    data = build_data(cfg, log if env.is_main else (lambda *_: None)) if env.is_main else None
    barrier(env)
    return data if data is not None else build_data(cfg, lambda *_: None)


def check_same_model(cfg: Config, run_dir: Path) -> None:
    """Resuming into a run directory trained with another model or method would overwrite its config.yaml and then
    fail on the weights: refuse up front and leave the directory untouched."""
    old_path = run_dir / "config.yaml"
    if not (old_path.is_file() and (run_dir / "checkpoints").is_dir()):
        return
    old = same_teacher(resolved(load_config(str(old_path))), cfg, run_dir)
    for section in ("model", "method", "distill"):
        then, now = getattr(old, section), getattr(cfg, section)
        if then != now:
            changed = "; ".join(
                f"{section}.{f.name}: {getattr(then, f.name)!r} there, {getattr(now, f.name)!r} now"
                for f in dataclasses.fields(then)
                if getattr(then, f.name) != getattr(now, f.name)
            )
            raise ConfigError(
                f"'{run_dir}' holds a run with a different {section} config ({changed}); "
                "use a new --out directory, or pass --config with that run directory to resume it"
            )
    for key in ("img_size", "in_chans"):
        if getattr(old.data, key) != getattr(cfg.data, key):
            raise ConfigError(
                f"'{run_dir}' was trained with data.{key}={getattr(old.data, key)}, not "
                f"{getattr(cfg.data, key)}; use a new --out directory"
            )


TEACHER_RECORD = "teacher.json"  # a distillation run's teacher as it started: its spelling and identity


def same_teacher(old: Config, cfg: Config, run_dir: Path) -> Config:
    """A resumed distillation's teacher: the same weights under another spelling (another checkout's copy of the
    file) count as the same teacher, and `old` takes today's spelling; a file whose content changed since the run
    started is refused; any other difference is left for check_same_model to name."""
    then, now = old.distill.teacher, cfg.distill.teacher
    if then is None or now is None:
        return old
    try:
        recorded = json.loads((run_dir / TEACHER_RECORD).read_text()).get("identity")
    except (OSError, ValueError, AttributeError):  # a run from before the record, or an unreadable one
        recorded = None
    if same_source(then, now, recorded):
        return dataclasses.replace(old, distill=dataclasses.replace(old.distill, teacher=now))
    if then == now:
        raise ConfigError(
            f"'{run_dir}' was distilled from distill.teacher '{now}', whose content has changed since the run "
            "started; use a new --out directory, or restore that teacher file"
        )
    return old


def record_teacher(cfg: Config, run_dir: Path) -> None:
    """Write TEACHER_RECORD, so a resume can tell the same teacher file from another even once this one is gone."""
    if cfg.distill.teacher is not None and method_spec(cfg).needs_teacher:
        from mimkit.weights.identity import source_identity

        record = {"teacher": cfg.distill.teacher, "identity": source_identity(cfg.distill.teacher)}
        atomic_write_text(run_dir / TEACHER_RECORD, json.dumps(record, indent=1))


def prepare_config(cfg: Config, env: DistEnv, log) -> tuple[Config, DataBundle, Source]:
    """Resolve the config against its weights source and data: architecture from `init`, the number of classes
    from the data set, steps from `train.epochs`."""
    cfg = resolved(cfg)
    source = resolve_source(cfg.init, cfg)
    cfg = adopt_source(cfg, source)  # scratch:SOURCE brings an architecture too; plain scratch keeps the config's
    if method_spec(cfg).needs_teacher:
        from mimkit.methods.distill.teacher import prepare_teacher

        cfg, teacher = prepare_teacher(cfg)
        source = dataclasses.replace(source, teacher=teacher)
    data = load_data_once(cfg, env, log)
    if cfg.model.num_classes is None and data.classes:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=len(data.classes)))
    if method_spec(cfg).needs_labels and data.train.labels is None:
        raise ConfigError(f"method.name={cfg.method.name} needs labels: '{cfg.data.root}' is not a class-folder tree")
    if cfg.train.epochs is not None:
        images = epoch_size(data.train, env.world_size)
        cfg = resolve_epochs(cfg, images)
        log(
            f"[train] {cfg.train.epochs:g} epochs of {images} images = {cfg.train.steps} steps "
            f"(train.epochs wins over train.steps: use --steps N to count in steps)"
        )
    return cfg, data, source


def build_evaluators(cfg: Config, data: DataBundle, env: DistEnv, autocast) -> tuple[dict[str, Any], tuple]:
    """The method's evaluators (its registry entry's; the held-out loss by default) and the metric that picks the
    best checkpoint: (split, key, 'min' | 'max')."""
    return (method_spec(cfg).evaluators or loss_evaluators)(cfg, data, env, autocast)


def pretrain(cfg: Config, run_dir: str | Path, require_checkpoint: bool = False) -> dict[str, Any]:
    """Train (or resume) a run in `run_dir` (MIM pretraining, supervised training, fine-tuning from `init`);
    returns the final numbers also written to results.json. The writing process holds the run directory's lock
    (engine/run_dir.py) throughout, so a second process on the same directory stops at once."""
    run_dir = Path(run_dir)
    env = init_distributed(cfg.device, cfg.train.dist_timeout)
    log = print if env.is_main else (lambda *_: None)
    if require_checkpoint and not (run_dir / "checkpoints").is_dir():
        raise CheckpointError(
            f"--resume: '{run_dir}' has no checkpoints/ to resume from; check the path, or drop "
            "--resume to start a new run there"
        )
    cfg, data, source = prepare_config(cfg, env, log)
    with run_dir_lock(run_dir, enabled=env.is_main):  # after the checks: a refused run creates no directory
        return _train(cfg, data, source, run_dir, env, log)


def _train(cfg: Config, data: DataBundle, source: Source, run_dir: Path, env: DistEnv, log) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    if env.is_main:
        check_same_model(cfg, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        record_teacher(cfg, run_dir)
    log(f"[data] {cfg.data.name}: {data.describe()}")
    method = build_method(cfg)
    if source.state is not None:
        loaded = load_encoder_weights(method.encoder, source.state, f"init '{cfg.init}'", cfg.data.resize_init)
        log(
            f"[init] {source.description}; fresh: {', '.join(loaded['fresh']) or 'none'}; "
            f"unused: {', '.join(loaded['unused']) or 'none'}"
        )
    if method_spec(cfg).needs_teacher:
        from mimkit.methods.distill.teacher import attach_teacher

        attach_teacher(method, cfg, source.teacher, log)
    n_params = sum(p.numel() for p in method.encoder.parameters())
    log(
        f"[model] {cfg.method.name} on {cfg.model.name}: encoder {n_params / 1e6:.2f}M params, "
        f"{sum(p.numel() for p in method.parameters()) / 1e6:.2f}M total; device {env.device}, "
        f"{env.world_size} process(es)"
    )
    stream = build_stream(cfg, data, env)
    meta = {
        "method": cfg.method.name,
        "model": cfg.model.name,
        "encoder_params": n_params,
        "versions": versions(),
        "world_size": env.world_size,
        "init": source.description,
    }
    if source.teacher is not None:
        meta["teacher"] = source.teacher.description
    engine = Engine(cfg, run_dir, method, env, stream, {}, meta)
    engine.evaluators, engine.best_metric = build_evaluators(cfg, data, env, engine.autocast)
    try:
        fit = engine.fit()
    finally:
        stream.close()  # worker processes (shard decoding, RandAugment) end with the run, also on errors
    split, key, _ = engine.best_metric
    results = {
        "step": fit.step,
        "init": source.description,
        f"best_{split}_{key}": fit.best,
        "train_images": len(data.train),
        "heldout_images": len(data.heldout),
        "images_per_epoch": stream.images_per_epoch,
        "epochs": fit.step * cfg.train.batch_size / max(1, len(data.train)),
        "skipped_images": len(data.skipped),
        "seconds": fit.seconds,  # summed over the sessions of a resumed run; a finished run re-run keeps it
    }
    for split_name, metrics in fit.final.items():
        results.update({f"final_{split_name}_{k}": v for k, v in metrics.items()})
    if env.is_main:
        from mimkit.viz.curves import plot_loss_curves

        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
        spec = method_spec(cfg)
        tuned = cfg.init and not cfg.init.startswith("scratch") and spec.name in ("supervised", "task")
        what = "fine-tuning" if tuned else spec.name
        results["loss_curve"] = str(
            plot_loss_curves(
                run_dir,
                loss_label=spec.loss_label,
                eval_inputs=spec.eval_inputs,
                score=key,
                title=f"{run_dir.name} ({what}): {spec.loss_label}",
                steps_per_epoch=stream.images_per_epoch / cfg.train.batch_size if cfg.train.epochs else None,
            )
        )
        if cfg.train.reconstruct and method.reconstructs:  # MIM methods only
            from mimkit.viz.reconstructions import reconstruction_figure

            results["reconstructions"] = str(
                reconstruction_figure(
                    method,
                    data.train,
                    data.heldout,
                    cfg,
                    run_dir / "figures" / "reconstructions.png",
                    device=env.device,
                )
            )
        engine.logger.figures({k: v for k, v in results.items() if k in ("loss_curve", "reconstructions")})
    engine.logger.close()
    barrier(env)
    return results
