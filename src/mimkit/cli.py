"""`mimkit` command line: parse, load the config, call one function per command. User errors exit 2, no traceback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from mimkit.engine.host_malloc import tune_host_malloc
from mimkit.errors import exit_code_of, in_process_group
from mimkit.outcome import training_exit_code


def with_length_flags(cfg, args: argparse.Namespace, probe: bool = False):
    """`--steps N` / `--epochs N` applied to a loaded config (config/length.py), its notes printed once."""
    from mimkit.config.length import with_length

    cfg, notes = with_length(cfg, getattr(args, "steps", None), getattr(args, "epochs", None), probe=probe)
    if os.environ.get("RANK", "0") == "0":
        for note in notes:
            print(f"[{'probe' if probe else 'train'}] {note}")
    return cfg


def cmd_pretrain(args: argparse.Namespace) -> int:
    from mimkit.config import load_config

    cfg = with_length_flags(load_config(args.config, [*data_overrides(args.data), *args.set]), args)
    from mimkit.training import pretrain  # torch and timm: after the config, whose errors answer at once

    return training_exit_code(
        lambda: pretrain(cfg, args.out, require_checkpoint=args.resume),
        "resume with the same command",
        command=f"{args.command} {args.out}",
        results_file=Path(args.out) / "results.json",
    )


DATA_HELP = "fashion-mnist, synthetic, or an image folder path (a folder with train/ and val/ is read as splits)"


def data_overrides(data: str | None) -> list[str]:
    """`--data fashion-mnist` or `--data PATH` (an image folder) as config overrides."""
    if data is None:
        return []
    if data in ("fashion-mnist", "synthetic"):
        return [f"data.name={data}"]
    return ["data.name=folder", f"data.root={data}"]


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tuning is supervised training started from `--init` weights, in the same Engine."""
    args.set = [f"init={args.init}", "method.name=supervised", *args.set]  # cmd_pretrain adds --data
    return cmd_pretrain(args)


def cmd_linprobe(args: argparse.Namespace) -> int:
    from mimkit.config import load_config
    from mimkit.summary import report

    cfg = load_config(args.config, [f"init={args.init}", *data_overrides(args.data), *args.set])
    cfg = with_length_flags(cfg, args, probe=True)
    from mimkit.eval.linprobe import linprobe  # torch: after the config, whose errors answer at once

    report(f"linprobe {args.out}", linprobe(cfg, args.out), Path(args.out) / "linprobe.json")
    return 0


def cmd_knn(args: argparse.Namespace) -> int:
    from mimkit.config import load_config
    from mimkit.summary import report

    cfg = load_config(args.config, [f"init={args.init}", *data_overrides(args.data), *args.set])
    from mimkit.eval.knn import knn_eval  # torch: after the config, whose errors answer at once

    report(f"knn {args.out}", knn_eval(cfg, args.out), Path(args.out) / "knn.json")
    return 0


def compare_outputs(out: str) -> str:
    """What a comparison wrote: its tables, and its figure unless only baselines were measured."""
    figure = "compare.png" if (Path(out) / "compare.png").is_file() else "no figure (no model measured)"
    return f"results.md, .csv, .json; {figure}"


def cmd_compare(args: argparse.Namespace) -> int:
    from mimkit.config import ConfigError
    from mimkit.eval.compare import compare, protocol_recipes, tables_from_cells
    from mimkit.eval.contrasts import parse_contrasts
    from mimkit.eval.pools import parse_pools

    contrasts, pools = parse_contrasts(args.contrast), parse_pools(args.pool)
    if args.tables_only:
        rows = tables_from_cells(args.out, contrasts, pools)
        print(f"{len(rows)} finished cells; rebuilt in {args.out}: {compare_outputs(args.out)}")
        print(open(f"{args.out}/results.md").read())
        return 0
    if not args.init:
        raise ConfigError("compare needs at least one --init [NAME=]SOURCE (or --tables-only to rebuild the tables)")
    protocol_sets = {"finetune": args.set_finetune, "linprobe": args.set_probe, "knn": args.set_probe}
    rows = compare(
        args.init,
        args.out,
        args.protocols.split(","),
        [*data_overrides(args.data), *args.set],
        protocol_sets,
        args.tasks.split(","),
        seeds=args.seeds,
        baselines=not args.no_baselines,
        length=(args.steps, args.epochs),
        recipes=protocol_recipes(args.finetune_config, args.probe_config),
        lanes=args.lanes,
        contrasts=contrasts,
        pools=pools,
    )
    print(f"{len(rows)} cells; in {args.out}: {compare_outputs(args.out)}")
    print(open(f"{args.out}/results.md").read())
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from mimkit.config import ConfigError, load_config

    cfg = load_config(args.config, [*data_overrides(args.data), *args.set])
    from mimkit.analysis.report import write_report  # torch: after the config, whose errors answer at once
    from mimkit.analysis.run import ANALYSES, AnalysisOptions, replot, run_analysis

    if args.analysis == "replot":
        print(write_report(replot(cfg, args.out), Path(args.out)))
        return 0
    if args.analysis == "seeds":
        from mimkit.analysis.seeds import run_seeds

        run_seeds(args.seed_dirs, args.out)
        print(Path(args.out) / "seeds.md")
        return 0
    if args.seed_dirs:
        raise ConfigError(f"--from belongs to `analyze seeds`, not `analyze {args.analysis}`")
    if not args.model:
        raise ConfigError(f"analyze {args.analysis} needs at least one --init [NAME=]SOURCE (or --model)")

    queries = []
    for text in args.query or ["0.5,0.5", "0.2,0.2"]:
        try:
            y, x = (float(v) for v in text.split(","))
        except ValueError:
            raise ConfigError(
                f"--query {text}: expected Y,X as fractions of the image height and width, e.g. 0.5,0.5 for the centre"
            ) from None
        queries.append((y, x))
    options = AnalysisOptions(
        images=args.images,
        batch_size=args.batch_size,
        capture=args.capture,
        renormalize_distance=args.renormalize_distance,
        cka_tokens=args.cka_tokens,
        queries=queries,
        map_images=args.map_images,
        foreground=args.foreground,
        foreground_threshold=args.foreground_threshold,
        pairs=args.pair,
    )
    analyses = set(ANALYSES) if args.analysis == "report" else {args.analysis}
    results = run_analysis(cfg, random_in_shared_architecture(args.model, cfg, args.set), analyses, args.out, options)
    if args.analysis == "report":
        print(write_report(results, Path(args.out)))
    else:
        print(Path(args.out) / "results.json")
    return 0


def random_in_shared_architecture(specs: list[str], cfg, overrides: list[str]) -> list[str]:
    """`--model NAME=scratch` becomes a random network in the architecture of the trained models beside it
    (weights.sources.scratch_in_shared_architecture): it keeps the config's model.name only when --set gave one."""
    from mimkit.eval.compare import model_name, source_of
    from mimkit.weights.sources import scratch_in_shared_architecture

    chosen = any(s.startswith("model.name=") for s in overrides)
    sources = scratch_in_shared_architecture([source_of(m) for m in specs], cfg, chosen, "analyze")
    return [f"{model_name(m)}={s}" for m, s in zip(specs, sources)]


def cmd_distill(args: argparse.Namespace) -> int:
    """Distillation is a training run of method `distill` in the same Engine; --chain runs stages in order."""
    from mimkit.config import ConfigError, load_config

    flags = [f"distill.teacher={args.teacher}"] if args.teacher else []
    flags += [f"model.name={args.student}"] if args.student else []
    # --teacher / --student win over --set (they are the more specific way to say it)
    overrides = ["method.name=distill", *data_overrides(args.data), *args.set, *flags]
    cfg = with_length_flags(load_config(args.config, overrides), args)
    students = [s.strip() for s in args.chain.split(",") if s.strip()] if args.chain is not None else cfg.distill.chain
    if students is None:
        from mimkit.training import pretrain

        return training_exit_code(
            lambda: pretrain(cfg, args.out, require_checkpoint=args.resume),
            "resume with the same command",
            command=f"distill {args.out}",
            results_file=Path(args.out) / "results.json",
        )
    from mimkit.methods.distill.chain import run_chain

    if args.resume and not Path(args.out, "chain.json").is_file():
        raise ConfigError(f"--resume: '{args.out}' has no chain.json to resume from")
    return training_exit_code(
        lambda: show_chain(run_chain(cfg, students, args.out), Path(args.out)),
        "re-run the same command to resume the chain",
    )


def show_chain(stages: list[dict[str, Any]], out: Path) -> None:
    """A line per stage of a distillation chain (chain.json keeps them all; --json prints them)."""
    from mimkit.summary import show

    lines = [f"distill chain {out} done"]
    for stage in stages:
        loss = stage.get("final_heldout_loss")
        held = f", held-out distillation loss {loss:.4g}" if isinstance(loss, (int, float)) else ""
        lines.append(
            f"  stage {stage['stage']}: {stage['teacher']} -> {stage['student']} ({stage['status']}{held}) "
            f"in {stage['run_dir']}"
        )
    show(stages, [*lines, f"  {'all stages':28s} {out / 'chain.json'}"])


def _description(text: str) -> str:
    """A recipe's or sweep's description: the first sentence of its leading comment block (which may span lines)."""
    block = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        block.append(line[1:].strip())
    words = " ".join(block)
    end = words.find(". ")
    return words[: end + 1] if end > 0 else words


def cmd_recipes(args: argparse.Namespace) -> int:
    import yaml
    from rich.console import Console
    from rich.table import Table

    from mimkit.config import RECIPES_DIR, recipe_names
    from mimkit.scaling.grid import SWEEPS_DIR, sweep_names

    table = Table(box=None, pad_edge=False, header_style="bold", expand=True)
    table.add_column("name", no_wrap=True)
    table.add_column("method / model / data", no_wrap=True)
    table.add_column("what it is", ratio=1, overflow="fold")
    for name in recipe_names():
        text = (RECIPES_DIR / f"{name}.yaml").read_text()
        tree = yaml.safe_load(text) or {}
        what = (
            f"{tree.get('method', {}).get('name', 'mae')} / {tree.get('model', {}).get('name', 'any')} / "
            f"{tree.get('data', {}).get('name', 'fashion-mnist')}"
        )
        table.add_row(name, what, _description(text))
    for name in sweep_names():
        table.add_row(
            name, "sweep: mimkit sweep --config NAME", _description((SWEEPS_DIR / f"{name}.yaml").read_text())
        )
    import shutil

    Console(width=max(150, shutil.get_terminal_size((150, 24)).columns), highlight=False).print(table)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from mimkit.methods import registry

    for spec in registry.specs():
        options = ", ".join(f"{f.name}={f.default}" for f in spec.option_fields())
        print(f"{spec.name:11s} {spec.summary}" + (f"\n{'':11s} method.* options: {options}" if options else ""))
    print("shared method.* keys: name, mask_ratio, mask_type, mask_patch_size (docs/guide.md, 'Add a method')")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    from mimkit.config import load_config, resolved
    from mimkit.methods import build_method
    from mimkit.models.presets import PRESETS
    from mimkit.models.swin import SWIN_PRESETS

    for name, spec in {**PRESETS, **SWIN_PRESETS}.items():
        img = 192 if spec.patch_size == 4 and spec.is_swin else 32
        cfg = resolved(
            load_config(
                None,
                [f"model.name={name}", f"data.img_size={img}", f"method.name={'simmim' if spec.is_swin else 'mae'}"],
            )
        )
        with torch.device("meta"):
            n = sum(p.numel() for p in build_method(cfg).encoder.parameters())
        depth = "-".join(map(str, spec.stage_depths)) if spec.is_swin else str(spec.depth)
        heads = "-".join(map(str, spec.stage_heads)) if spec.is_swin else str(spec.num_heads)
        print(
            f"{name:17s} dim {spec.embed_dim:4d} depth {depth:>9s} heads {heads:>11s} patch {spec.patch_size}"
            f"{f'  window {spec.window_size}' if spec.is_swin else '':11s} encoder {n / 1e6:8.2f}M params"
        )
    print(
        "...or any timm ViT name (timm.list_models('vit_*')) or SwinV2 (timm.list_models('swinv2_*')), with "
        "model.patch_size/embed_dim/stage_depths/... overrides"
    )
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    import torch

    from mimkit.api import load
    from mimkit.data.datasets import build_data
    from mimkit.errors import ConfigError
    from mimkit.viz.reconstructions import reconstruction_figure

    method = load(args.run, device="cuda" if torch.cuda.is_available() else "cpu")
    cfg = method.config
    if not method.reconstructs:
        raise ConfigError(
            f"{args.run} was trained with method.name={cfg.method.name}, which does not reconstruct "
            "images: reconstructions need an MAE or SimMIM run"
        )
    data = build_data(cfg)
    out = args.out or Path(args.run) / "figures" / "reconstructions.png"
    path = reconstruction_figure(
        method,
        data.train,
        data.heldout,
        cfg,
        out,
        n=args.n,
        device=next(method.parameters()).device,
        true_patch_stats=args.true_patch_stats,
    )
    print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mimkit.interop.export import export_encoder

    if args.format == "hf":
        from mimkit.api import load
        from mimkit.engine.run_dir import usable_out_dir
        from mimkit.interop.hf_export import export_hf

        usable_out_dir(args.out)
        info = export_hf(load(args.run), args.out)
        print(
            f"wrote {info['directory']} ({info['keys']} tensors, transformers {info['transformers']})\nload it with:\n"
            f"  from transformers import ViTMAEForPreTraining\n  ViTMAEForPreTraining.from_pretrained('{args.out}')"
        )
        return 0
    info = export_encoder(args.run, args.out)
    print(f"wrote {info['file']} (+ .json)\nload it with:\n  import timm\n  {info['snippet']}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from mimkit.interop.imports import import_checkpoint
    from mimkit.summary import show

    result = import_checkpoint(args.source, args.out, args.format, args.set)
    show(
        result,
        [
            f"import {args.source} done ({result['format']}, encoder {result['encoder_params'] / 1e6:.2f}M params)",
            f"  {'run directory':28s} {result['run_dir']}",
            f"  {'checkpoint':28s} {result['checkpoint']}",
        ],
    )
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from mimkit.data.webdataset.write import write_shards_from, write_synthetic_shards

    if args.per_shard < 1:
        print(f"mimkit: error: --per-shard ({args.per_shard}) must be positive", file=sys.stderr)
        return 2
    if args.data == "synthetic":
        width, _, height = args.image_size.partition("x")
        if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0) or args.count < 1:
            print(
                f"mimkit: error: --image-size '{args.image_size}' must be WIDTHxHEIGHT (e.g. 500x375) and --count "
                f"({args.count}) positive",
                file=sys.stderr,
            )
            return 2
        paths = write_synthetic_shards(
            args.out, args.count, int(width), int(height), args.per_shard, prefix=args.prefix or "synthetic"
        )
    else:
        paths = write_shards_from(args.data, args.out, args.per_shard, args.split, args.prefix)
    if not paths:
        print(f"no images in {args.data}: nothing written")
        return 1
    first, last = paths[0].name, paths[-1].name
    stem = first.rsplit("-", 1)[0]
    pattern = f"{paths[0].parent}/{stem}-{{{first.rsplit('-', 1)[1][:-4]}..{last.rsplit('-', 1)[1][:-4]}}}.tar"
    print(
        f"wrote {len(paths)} shard(s) to {args.out}; train with --set data.name=webdataset --set data.root='{pattern}'"
    )
    return 0


def bench_out(args: argparse.Namespace) -> str | None:
    """A bench's --out: a directory (results.json and its companions go inside), never a file beside others."""
    from mimkit.errors import ConfigError

    out = getattr(args, "out", None)  # bench memory writes nothing
    if out is not None and Path(out).suffix == ".json":
        raise ConfigError(
            f"--out '{out}': a bench's --out is a directory (results.json and, for the suite, report.md and "
            f"breakdown.png go inside), e.g. --out {Path(out).with_suffix('')}"
        )
    return out


def cmd_bench(args: argparse.Namespace) -> int:
    from mimkit.config import load_config
    from mimkit.summary import show

    out = bench_out(args)
    kept = f"all results in {Path(out) / 'results.json'}" if out else "add --out DIR to keep the results as JSON"
    if args.bench_command == "suite":
        from mimkit.bench.suite import format_table, run_suite

        groups = args.only.split(",") if args.only else None
        result = run_suite(
            args.preset,
            args.device,
            steps=args.steps,
            warmup=args.warmup,
            groups=groups,
            compile_rows=args.compile,
            batch=args.batch,
            rounds=args.rounds,
            compile_modes=tuple(args.compile_mode),
            breakdown_steps=args.breakdown_steps,
            trace_dir=args.trace_dir,
            out=out,
        )
        extras = ", the table as Markdown in report.md" + (
            ", the time breakdown in breakdown.png" if "breakdown_figure" in result else ""
        )
        show(result, [format_table(result), kept + (extras if out else "")])
        return 0
    if args.bench_command == "lanes":
        from mimkit.bench.lanes_bench import lanes_summary, parse_lanes, run_lanes_bench

        counts = parse_lanes(args.lanes)
        result = run_lanes_bench(args.group, args.set, counts, args.steps, args.warmup, args.rounds, out)
        show(result, [*lanes_summary(result), kept])
        return 0
    cfg = load_config(args.config, [*data_overrides(getattr(args, "data", None)), *args.set])
    if args.bench_command == "memory":
        from mimkit.bench.memory import run_memory_estimate

        est = run_memory_estimate(cfg, args.batch)
        line = (
            f"{est['method']} {est['model']} at {est['img_size']} px, batch {est['batch']}, {est['precision']}: "
            f"about {est['total_gb']:.1f} GB ({est['state_gb']:.1f} GB weights + gradients + AdamW, "
            f"{est['activations_gb_per_image'] * est['batch']:.1f} GB activations and {est['fixed_saved_gb']:.1f} GB "
            "other tensors saved for backward; add the CUDA context and allocator slack)"
        )
        show(est, [line])
        return 0
    if args.bench_command == "loader":
        from mimkit.bench.loader_bench import loader_summary, run_loader_bench

        result = run_loader_bench(cfg, steps=args.steps, warmup=args.warmup, out=out)
        show(result, [*loader_summary(result), kept])
        return 0
    from mimkit.bench.pretrain_bench import pretrain_summary, run_pretrain_bench

    result = run_pretrain_bench(
        cfg,
        steps=args.steps,
        warmup=args.warmup,
        compare=args.compare,
        breakdown_steps=args.breakdown_steps,
        pipeline=args.pipeline,
        out=out,
    )
    show(result, [*pretrain_summary(result), kept])
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from mimkit.scaling.sweep import run_sweep

    result = run_sweep(
        args.config,
        args.out,
        parallel=args.parallel,
        launcher=args.launcher,
        dry_run=args.dry_run,
        finetune=False if args.no_finetune else None,
        wait=not args.no_wait,
        sets=args.set,
        only=args.only,
    )
    return 1 if result.get("failed") else 0


def cmd_scaling(args: argparse.Namespace) -> int:
    from mimkit.scaling.analyze import analyze_table, summary_lines

    if args.scaling_command == "collect":
        from mimkit.scaling.grid import load_sweep
        from mimkit.scaling.sweep import collect

        path = collect(load_sweep(args.config, args.dir))
        print(path if path else f"no finished run in {args.dir} yet")
        return 0 if path else 1
    if args.scaling_command == "kept":
        from mimkit.scaling.kept import kept_table

        kept_table(args.runs, Path(args.compare), Path(args.out), protocol=args.protocol, merge=args.merge, say=print)
        return 0
    result = analyze_table(
        args.results, args.out, tolerance=args.tolerance, form=args.form, curves=args.curves, baselines=args.baselines
    )
    print("\n".join(summary_lines(result)))
    print(f"{Path(args.out) / 'scaling.json'}, results.md and {len(result['figures'])} figures in {args.out}")
    return 0


def add_length_flags(
    p: argparse.ArgumentParser,
    probe: bool = False,
    steps_help: str = "train N optimizer steps (warm-up, evaluation and checkpoint intervals follow; default: the "
    "recipe's)",
    epochs_help: str = "train N epochs (warm-up follows; evaluation and checkpoints once per epoch; default: the "
    "recipe's)",
) -> None:
    """--steps / --epochs, the one-flag way to change a training command's length (config/length.py). The probe
    counts whole epochs and has no --steps."""
    length = p.add_mutually_exclusive_group()
    if not probe:
        length.add_argument("--steps", type=int, default=None, metavar="N", help=steps_help)
    length.add_argument(
        "--epochs",
        type=int if probe else float,
        default=None,
        metavar="N",
        help="train the probe N epochs (warm-up follows; default: the recipe's probe.epochs)" if probe else epochs_help,
    )


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none worth saying (None, off, empty) or already
    says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, False, [], argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """mimkit's parser: its sub-commands are Parsers too (argparse makes them of the parent's class), so every
    command's --help shows the defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mimkit", description="Masked image modeling research toolkit")
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of a failure (also MIMKIT_DEBUG=1)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="end training and probing commands with their whole results as JSON (for scripts) instead of a summary",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain with MAE or SimMIM (re-run the same command to resume)")
    p.add_argument("--config", required=True, help="recipe name (see `mimkit recipes`), YAML file or run directory")
    p.add_argument("--data", default=None, help=DATA_HELP + " (default: the recipe's data.name)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.steps=500")
    add_length_flags(p)
    p.add_argument("--resume", action="store_true", help="require an existing checkpoint in --out")
    p.set_defaults(func=cmd_pretrain)

    for name, func, default, what in (
        ("finetune", cmd_finetune, "finetune_fmnist_tiny", "fine-tune an encoder (layer decay, mixup, RandAugment)"),
        ("linprobe", cmd_linprobe, "probe_fmnist", "linear probe on frozen features (cached)"),
        ("knn", cmd_knn, "probe_fmnist", "cosine kNN on frozen features (k=20, T=0.07)"),
    ):
        p = sub.add_parser(name, help=what)
        sources = "run dir or checkpoint, exported .safetensors, timm:NAME, scratch, scratch:SOURCE"
        p.add_argument("--init", required=True, help=sources + (", or pixels" if name != "finetune" else ""))
        p.add_argument("--config", default=default, help=f"recipe, YAML or run directory (default {default})")
        p.add_argument("--data", default=None, help=DATA_HELP)
        p.add_argument("--out", required=True, help="run directory")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
        if name != "knn":
            add_length_flags(p, probe=name == "linprobe")
        if name == "finetune":
            p.add_argument("--resume", action="store_true", help="require an existing checkpoint in --out")
        p.set_defaults(func=func)

    p = sub.add_parser("distill", help="TinyMIM distillation: relations (qk, vv), features or CLS of a teacher")
    p.add_argument(
        "--teacher", default=None, help="run dir or checkpoint (any method), exported .safetensors or timm:NAME[@FILE]"
    )
    p.add_argument("--student", default=None, help="student model: a mimkit preset or timm vit_* name")
    p.add_argument(
        "--chain",
        default=None,
        metavar="NAME,NAME,...",
        help="sequential distillation: students in order, each the next one's teacher (OUT/stageK-NAME); "
        "a recipe can list them as distill.chain",
    )
    p.add_argument("--config", default="distill_fmnist_tiny", help="recipe, YAML or run directory")
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--out", required=True, help="run directory (the chain's parent directory with --chain)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="e.g. distill.targets=qk+vv, distill.teacher_layer=18, distill.mask_ratio=0.6",
    )
    add_length_flags(p)
    p.add_argument("--resume", action="store_true", help="require an existing checkpoint in --out")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("compare", help="models x {knn, linprobe, finetune} x tasks, resumable, with tables")
    p.add_argument("--init", action="append", default=[], help="a source (or NAME=SOURCE); repeat per model")
    p.add_argument(
        "--out", required=True, help="directory for the cells' runs and results.md / .csv / .json and compare.png"
    )
    p.add_argument(
        "--tables-only",
        action="store_true",
        help="run nothing: rebuild the tables from every finished cell in --out (a comparison run in pieces, "
        "e.g. more models or protocols added later)",
    )
    p.add_argument("--protocols", default="knn,linprobe,finetune", help="comma-separated: knn, linprobe, finetune")
    from mimkit.data.options import TASKS  # light: no torch

    p.add_argument("--tasks", default="classification", help=f"comma-separated: {', '.join(TASKS)}")
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every cell")
    p.add_argument("--set-finetune", action="append", default=[], metavar="KEY=VALUE", help="fine-tuning cells")
    p.add_argument("--set-probe", action="append", default=[], metavar="KEY=VALUE", help="linprobe and knn cells")
    p.add_argument(
        "--finetune-config",
        default=None,
        metavar="RECIPE",
        help="recipe or YAML of the fine-tuning and task-head cells (default finetune_fmnist_tiny; e.g. the tuned "
        "finetune_fmnist_pico)",
    )
    p.add_argument(
        "--probe-config", default=None, metavar="RECIPE", help="recipe or YAML of the kNN and linprobe cells"
    )
    p.add_argument("--seeds", type=int, default=1, help="run every cell with seeds 0..N-1; tables show mean ± std")
    add_length_flags(
        p,
        steps_help="length of the fine-tuning and task-head cells",
        epochs_help="length of every cell that trains (the linear probe's in whole epochs)",
    )
    p.add_argument(
        "--no-baselines",
        action="store_true",
        help="leave out the baselines that learn nothing (raw pixels, frozen random encoder, trivial predictor)",
    )
    p.add_argument(
        "--lanes",
        type=int,
        default=1,
        help="run this many cells at a time, each in its own process with an equal share of the CPU threads (small "
        "models leave cores idle; each cell's output then goes to OUT/cells/NAME.log); default 1",
    )
    p.add_argument(
        "--contrast",
        action="append",
        default=[],
        metavar="A:B",
        help="model A against model B (repeat per pair): their difference per task and protocol, paired by seed, "
        "with a verdict, in results.md and contrasts.csv (also with --tables-only)",
    )
    p.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="NAME=A,B,C",
        help="pool models that are replicas of one method (pretrained with different seeds) into one row NAME: each "
        "replica's mean over its seeds, then mean ± std over the replicas; --contrast may name it (also with "
        "--tables-only)",
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("analyze", help="attention distance, head diversity, CKA and attention maps of ViTs")
    p.add_argument(
        "analysis",
        choices=["attention", "diversity", "cka", "maps", "report", "replot", "seeds"],
        help="attention: distance + entropy per head; diversity: KL between heads; cka: layer "
        "similarity; maps: attention overlays; report: all of them and one HTML page; replot: "
        "redraw the figures and report of --out from its results.json; seeds: mean +- std over the "
        "analyses given by --from (one per pretraining seed)",
    )
    p.add_argument(
        "--init",
        "--model",
        dest="model",
        action="append",
        default=[],
        metavar="[NAME=]SOURCE",
        help="a model to analyse, as every command's --init: run dir or checkpoint (any method), exported "
        ".safetensors, timm:NAME or scratch; repeat (--model is the same flag)",
    )
    p.add_argument("--data", default=None, help=DATA_HELP + "; its held-out split is analysed")
    p.add_argument("--images", type=int, default=1000, help="held-out images to analyse (seeded sample)")
    p.add_argument("--out", required=True, help="directory for results.json, figures and report.html")
    p.add_argument("--config", default="probe_fmnist", help="recipe or YAML for data settings (default probe_fmnist)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. data.img_size=224")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass while capturing")
    p.add_argument(
        "--capture",
        choices=["recompute", "unfused"],
        default="recompute",
        help="recompute attention from each block's qkv (default) or read timm's with fused attention off",
    )
    p.add_argument(
        "--renormalize-distance",
        action="store_true",
        help="rescale patch-to-patch attention rows to sum to 1 after dropping prefix tokens",
    )
    p.add_argument(
        "--cka-tokens",
        choices=["all", "patch", "cls", "mean"],
        default="all",
        help="per-image representation for CKA: all tokens flattened (default), patch tokens, class "
        "token, or patch mean",
    )
    p.add_argument(
        "--query",
        action="append",
        metavar="Y,X",
        help="attention-map query position as fractions of height and width (default 0.5,0.5 and 0.2,0.2); repeat",
    )
    p.add_argument("--map-images", type=int, default=4, help="images in the attention-map figures")
    p.add_argument(
        "--foreground",
        action="store_true",
        help="also compute attention and diversity over foreground patches only (queries and keys), so "
        "background attention sinks can be told apart; for images on a plain background",
    )
    p.add_argument(
        "--foreground-threshold",
        type=float,
        default=0.1,
        help="a patch is foreground when a pixel differs from the border level by more than this (of full scale)",
    )
    p.add_argument(
        "--from",
        dest="seed_dirs",
        action="append",
        default=[],
        metavar="DIR",
        help="analyze seeds: the --out of one `analyze report` per seed, same model names in each; repeat",
    )
    p.add_argument(
        "--pair",
        action="append",
        default=[],
        metavar="PRE,FT",
        help="compare these two models before/after fine-tuning (runs fine-tuned from another --model pair up "
        "by themselves)",
    )
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "sweep",
        help="run a grid of pretraining runs (models x data x lengths x seeds), "
        "skipping finished runs and resuming interrupted ones",
    )
    p.add_argument("--config", required=True, help="sweep YAML (base, set, grid, finetune, parallel, slurm)")
    p.add_argument("--out", required=True, help="sweep directory: runs/, results.csv, curves.json")
    p.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="runs at once on this machine (default: the "
        "sweep's `parallel`, else 1); CPU threads are split between them",
    )
    p.add_argument(
        "--launcher",
        choices=["local", "slurm", "submitit-local"],
        default="local",
        help="local: child processes here; slurm: one submitit job per run; submitit-local: submitit's local executor",
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands that are left, run nothing")
    p.add_argument("--no-finetune", action="store_true", help="skip the sweep's fine-tunes")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return (re-run later to collect)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run, after the sweep's own `set` (not a key a grid axis sets); repeat it "
        "when re-running the sweep",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run only the runs whose directory name matches this shell pattern (e.g. 'mim_vit_pico-*'); repeatable",
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("scaling", help="analyse a scaling table: over-fitting, saturation, loss vs accuracy, fits")
    scaling = p.add_subparsers(dest="scaling_command", required=True)
    s = scaling.add_parser("analyze", help="RESULTS.csv -> scaling.json and figures")
    s.add_argument(
        "results",
        help="a sweep's results.csv or any CSV with model, params, data, iterations, "
        "heldout_loss (+ finetune_top1, train_loss, data_images, compute)",
    )
    s.add_argument("--out", required=True, help="directory for scaling.json and the figures")
    s.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="relative rise of held-out loss that counts as over-fitting (default 0: any rise)",
    )
    s.add_argument(
        "--form",
        choices=["auto", "pure", "saturating"],
        default="auto",
        help="power law A*x^-alpha (pure), E + A*x^-alpha (saturating) or the better by AIC (auto)",
    )
    s.add_argument(
        "--curves",
        default=None,
        help="curves.json for the training-curve figure (default: next to the CSV, when there)",
    )
    s.add_argument(
        "--baselines",
        action="append",
        default=[],
        metavar="MODEL=COMPARE_DIR",
        help="per model: a `mimkit compare` of its architecture from random initialisation (named scratch) with the "
        "sweep's fine-tuning; results.md then shows it and the baselines that learn nothing beside the cells",
    )
    s.set_defaults(func=cmd_scaling)
    s = scaling.add_parser(
        "kept",
        help="a pretraining run's kept checkpoints, scored by a compare -> results.csv (held-out loss vs transfer "
        "along the run, for scaling analyze)",
    )
    s.add_argument(
        "runs",
        nargs="+",
        metavar="RUN[=FINAL]",
        help="pretraining run directories (train.keep_every at multiples of train.eval_every); =FINAL names the "
        "compare model that is the run's final encoder (e.g. its export)",
    )
    s.add_argument("--compare", required=True, help="the `mimkit compare --out` directory that scored the checkpoints")
    s.add_argument(
        "--protocol",
        choices=["finetune", "linprobe", "knn"],
        default="finetune",
        help="which compare score becomes the table's finetune_top1 column (default finetune); mean over its seeds",
    )
    s.add_argument("--out", required=True, help="directory for results.csv and curves.json")
    s.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of an existing --out table that these runs do not replace (same model name)",
    )
    s.set_defaults(func=cmd_scaling)
    s = scaling.add_parser("collect", help="rebuild a sweep's results.csv from its run directories")
    s.add_argument("--config", required=True, help="the sweep YAML")
    s.add_argument("dir", help="the sweep directory (--out of mimkit sweep)")
    s.set_defaults(func=cmd_scaling)

    p = sub.add_parser("recipes", help="list shipped recipes")
    p.set_defaults(func=cmd_recipes)
    p = sub.add_parser("methods", help="list training methods (the registry) and their method.* options")
    p.set_defaults(func=cmd_methods)
    p = sub.add_parser("models", help="list model presets")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("reconstruct", help="figure of original / masked / reconstruction, train vs held-out")
    p.add_argument("run", help="run directory or checkpoint folder")
    p.add_argument("--out", default=None, help="PNG path (default RUN/figures/reconstructions.png)")
    p.add_argument("--n", type=int, default=6, help="images per side")
    p.add_argument(
        "--true-patch-stats",
        action="store_true",
        help="de-normalise normalised-pixel predictions with each masked patch's own mean/std (as MAE's demo; shows "
        "what the model never saw)",
    )
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser(
        "export", help="encoder-only weights in timm's key layout (safetensors), or a HF ViTMAE directory"
    )
    p.add_argument("run", help="run directory or checkpoint folder")
    p.add_argument("--out", required=True, help="output .safetensors path (timm) or directory (hf)")
    p.add_argument(
        "--format",
        choices=["timm", "hf"],
        default="timm",
        help="timm: the encoder for timm.create_model (default); hf: the whole MAE as ViTMAEForPreTraining",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="HF ViTMAEForPreTraining directory or official MAE .pth -> run directory")
    p.add_argument("source")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument(
        "--format",
        choices=["auto", "hf", "mae-pth"],
        default="auto",
        help="hf: a ViTMAEForPreTraining directory; mae-pth: an official MAE checkpoint; auto: told by the files",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="official .pth: what its state dict does not say (model.num_heads, model.decoder_heads, "
        "method.norm_pix, method.mask_ratio)",
    )
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "shards", help="write WebDataset tar shards (data.name=webdataset) from Fashion-MNIST or an image folder"
    )
    p.add_argument(
        "--data",
        required=True,
        help="fashion-mnist, an image folder (class folders become labels), or "
        "synthetic (JPEGs shaped like ImageNet's, random labels: for `mimkit bench loader`)",
    )
    p.add_argument("--out", required=True, help="directory for the .tar shards")
    p.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    p.add_argument("--count", type=int, default=4096, help="synthetic: number of samples")
    p.add_argument("--image-size", default="500x375", help="synthetic: WIDTHxHEIGHT of the JPEGs")
    p.add_argument("--split", choices=["train", "test"], default="train", help="fashion-mnist split")
    p.add_argument("--prefix", default=None, help="shard file name prefix")
    p.set_defaults(func=cmd_shards)

    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench_command", required=True)
    b = bench.add_parser("pretrain", help="time pretraining steps (img/s, peak memory)")
    b.add_argument("--config", required=True, help="recipe name, YAML file or run directory")
    b.add_argument("--data", default=None, help=DATA_HELP + " (default: the recipe's data.name)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    b.add_argument("--steps", type=int, default=20, help="timed steps")
    b.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    b.add_argument("--compare", choices=["hf"], default=None, help="also time HF ViTMAEForPreTraining, same shape")
    b.add_argument(
        "--breakdown-steps",
        type=int,
        default=3,
        metavar="N",
        help="profiled steps after timing, for MFU and where the time goes (0: neither)",
    )
    b.add_argument(
        "--pipeline",
        action="store_true",
        help="also time the step fed by the config's data through mimkit's input pipeline (e.g. "
        "--set data.name=webdataset --set data.decode=device) and report its ratio to the step alone",
    )
    b.add_argument("--out", default=None, metavar="DIR", help="keep results.json in DIR (default: print only)")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser(
        "suite",
        help="the whole performance table: MAE, SimMIM, distillation, fine-tuning and a "
        "memory check, mimkit against HuggingFace and plain timm in one process",
    )
    b.add_argument(
        "--preset",
        choices=["tiny", "vit-b16"],
        default=None,
        help="shapes: tiny (CPU-sized) or vit-b16 (ViT-B/16 at 224 px; ViT-L/16 for memory); default "
        "vit-b16 on a GPU, tiny otherwise",
    )
    b.add_argument("--device", default="auto", help="auto | cpu | cuda")
    b.add_argument("--only", default=None, help="comma-separated workloads: mae,simmim,distill,finetune,memory")
    b.add_argument("--steps", type=int, default=10, help="timed steps per row (the memory rows run 3)")
    b.add_argument("--warmup", type=int, default=3, help="untimed steps per row first (compilation happens here)")
    b.add_argument("--batch", type=int, default=None, help="override every workload's batch")
    b.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved timing passes per workload, median reported (default: 5 on CPU, where the "
        "machine may be shared; 1 on a GPU, rows timed one after another with their own memory)",
    )
    b.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add torch.compile rows (default: on CUDA only)",
    )
    b.add_argument(
        "--compile-mode",
        action="append",
        default=[],
        metavar="MODE",
        help="one more compiled mimkit row for MAE and SimMIM per inductor mode: reduce-overhead (CUDA "
        "graphs), max-autotune, max-autotune-no-cudagraphs; repeatable",
    )
    b.add_argument(
        "--breakdown-steps",
        type=int,
        default=None,
        metavar="N",
        help="profiled steps per row after timing, for where its time goes (matmul, attention, "
        "elementwise, copies, optimizer, idle; 0: no breakdown; default 1 on a GPU, 3 on a CPU, "
        "spread over the rounds)",
    )
    b.add_argument(
        "--trace-dir",
        default=None,
        metavar="DIR",
        help="also keep each mimkit row's profiled window as a gzip'd Chrome trace in DIR (Perfetto, chrome://tracing)",
    )
    b.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="keep results.json, report.md (the table as Markdown) and breakdown.png in DIR (default: print only)",
    )
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser(
        "memory",
        help="estimate training memory (weights, gradients, AdamW, activations saved for backward) without a GPU",
    )
    b.add_argument("--config", required=True, help="recipe name, YAML file or run directory")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    b.add_argument("--batch", type=int, default=None, help="batch per process (default: the config's)")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser(
        "lanes",
        help="total img/s of N small trainings side by side (compare --lanes, sweep --parallel) against one "
        "with every core",
    )
    b.add_argument("--group", choices=["mae", "simmim", "distill", "finetune"], default="distill", help="workload")
    b.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the tiny preset (e.g. model.name=mim_vit_femto, data.img_size=28; teacher=NAME for distill)",
    )
    b.add_argument("--lanes", default="1,2", help="lane counts to time, comma-separated (1 is always timed)")
    b.add_argument("--steps", type=int, default=20, help="timed steps per lane per round")
    b.add_argument("--warmup", type=int, default=3, help="untimed steps per lane first")
    b.add_argument("--rounds", type=int, default=3, help="interleaved rounds, median reported")
    b.add_argument("--out", default=None, metavar="DIR", help="keep results.json in DIR (default: print only)")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser("loader", help="img/s of the input pipeline alone (decoded images -> augmented batches)")
    b.add_argument("--config", required=True, help="recipe name, YAML file or run directory")
    b.add_argument("--data", default=None, help=DATA_HELP + " (default: the recipe's data.name)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    b.add_argument("--steps", type=int, default=50, help="timed batches")
    b.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    b.add_argument("--out", default=None, metavar="DIR", help="keep results.json in DIR (default: print only)")
    b.set_defaults(func=cmd_bench)
    return parser


# Commands whose --out is a file, not a directory; and those that write a run's state (one process at a time).
OUT_FILE_COMMANDS = (cmd_reconstruct, cmd_export)
LOCKED_COMMANDS = (cmd_pretrain, cmd_finetune, cmd_linprobe, cmd_knn, cmd_distill, cmd_compare, cmd_sweep)


def run_command(args: argparse.Namespace) -> int:
    """The command, after its output path is checked (and, for a run, locked by the process that writes it)."""
    from mimkit.engine.run_dir import run_dir_lock, usable_out_dir, usable_out_file

    out = getattr(args, "out", None)
    if out is None:
        return args.func(args)
    if args.func in OUT_FILE_COMMANDS:
        usable_out_file(out)
        return args.func(args)
    usable_out_dir(out)
    # an existing run is locked at once; a new one by pretrain() when it creates the directory, after its config
    # is validated (a refused command leaves no directory behind)
    writer = args.func in LOCKED_COMMANDS and os.environ.get("RANK", "0") == "0" and Path(out).is_dir()
    with run_dir_lock(out, enabled=writer):
        return args.func(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line, not only before the command
    import mimkit.summary

    mimkit.summary.JSON_OUTPUT = "--json" in argv  # the same: the whole results as JSON instead of a summary
    args = build_parser().parse_args([a for a in argv if a not in ("--debug", "--json")])
    tune_host_malloc()  # before the first large tensor: see engine/host_malloc.py
    code = exit_code_of(lambda: run_command(args), debug=debug)
    if code != 0 and in_process_group():
        # a process group whose peer is gone can abort the interpreter's shutdown (gloo's destructors call
        # std::terminate: exit -6 instead of 75, seen in CI): everything mimkit writes is already on disk (atomic
        # files, fsync'd metrics, closed logs), so a failed rank leaves at once with the status that says why
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
