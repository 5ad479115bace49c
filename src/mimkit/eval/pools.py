"""Pretraining replicas pooled into one row (`compare --pool NAME=A,B,C`). A claim about a method is a claim about
its pretraining, not about one run of it: the evaluation seeds of one pretrained encoder measure the protocol's
noise, never the pretraining's. Given the same method pretrained with different seeds, each its own model of the
comparison, a pool takes each replica's mean over its own evaluation seeds, then the mean and sample std over the
replicas (n = replicas): a nested design whose spread includes the pretraining's. Pools are rows like any model's
in the tables, the figure and the contrasts (eval/contrasts.py compares a pool unpaired: replicas share no seed)."""

from __future__ import annotations

from typing import Any

from mimkit.config import ConfigError
from mimkit.eval.spread import spread

Pool = tuple[str, list[str]]


def parse_pools(specs: list[str]) -> list[Pool]:
    """`NAME=A,B[,C...]` words -> (NAME, [A, B, ...]), in the order given."""
    pools: list[Pool] = []
    for spec in specs:
        name, sep, members_text = spec.partition("=")
        members = [m.strip() for m in members_text.split(",")]
        if not (sep and name) or "," in name or not all(members) or any("+" in m for m in [name, *members]):
            raise ConfigError(
                f"--pool '{spec}': give NAME=A,B[,C...], the models to pool under a new name (no '+' in the names: "
                "the tables join a pool's models with it), e.g. --pool mae=mae_s0,mae_s1,mae_s2"
            )
        if len(set(members)) != len(members) or len(members) < 2:
            raise ConfigError(f"--pool '{spec}': a pool needs two or more different models (one is its own row)")
        if name in members:
            raise ConfigError(f"--pool '{spec}': the pool's name {name!r} is one of its models: give it a new name")
        if any(name == other for other, _ in pools):
            raise ConfigError(f"--pool: two pools are named {name!r}")
        pools.append((name, members))
    return pools


def check_pools(pools: list[Pool], models: list[str], baselines: list[str]) -> None:
    """A pool's members are models of the comparison (not baselines: nothing to pool), and its name is new."""
    for name, members in pools:
        if name in models or name in baselines:
            raise ConfigError(f"--pool {name}=...: {name!r} is already a model or baseline of this comparison")
        unknown = [m for m in members if m not in models]
        if unknown:
            raise ConfigError(
                f"--pool {name}=...: no model named {', '.join(map(repr, unknown))} in this comparison; its models: "
                f"{', '.join(models) or 'none yet'}"
            )


def pool_sizes(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Each pool's number of replicas, from its rows' (or summary rows') `pool` field: its models joined by +
    (parse_pools refuses + in names). Models that are no pool are absent."""
    return {row["model"]: len(row["pool"].split("+")) for row in rows if row.get("pool")}


def pooled_rows(rows: list[dict[str, Any]], pools: list[Pool]) -> list[dict[str, Any]]:
    """For each pool and each (task, protocol) one of its members was measured with: one row per member that has
    it, valued at that member's mean over its seeds, numbered by its place in the pool (`seed`). A column some
    replica lacks (still running) has fewer rows than the pool has replicas: the tables say "k of N replicas" and
    its contrasts give no verdict."""
    values: dict[tuple[str, str, str], list[float]] = {}
    metric: dict[str, str] = {}
    for row in rows:
        if row.get("value") is not None and not row.get("baseline"):
            values.setdefault((row["model"], row["task"], row["protocol"]), []).append(float(row["value"]))
            metric[row["task"]] = row["metric"]
    columns = list(dict.fromkeys((t, p) for _, t, p in values))
    out = []
    for name, members in pools:
        for task, protocol in columns:
            for place, member in enumerate(members):
                measured = values.get((member, task, protocol))
                if not measured:
                    continue
                out.append(
                    {
                        "model": name,
                        "source": "pool of " + ", ".join(members),
                        "protocol": protocol,
                        "task": task,
                        "seed": place,
                        "baseline": False,
                        "metric": metric[task],
                        "value": spread(measured)["mean"],
                        "pool": "+".join(members),
                        "replica": member,
                        "replica_seeds": len(measured),
                    }
                )
    return out


def pool_notes(rows: list[dict[str, Any]]) -> list[str]:
    """results.md's line per pool: what its mean ± std is over, and how many seeds stand behind each replica in each
    column (a column without every replica is named)."""
    seen: dict[str, dict[tuple[str, str], dict[str, int]]] = {}
    sizes = pool_sizes(rows)
    for row in rows:
        if row.get("pool"):
            column = seen.setdefault(row["model"], {}).setdefault((row["task"], row["protocol"]), {})
            column[row["replica"]] = int(row["replica_seeds"])
    lines = []
    for name, columns in seen.items():
        parts = []
        for (task, protocol), replicas in columns.items():
            counts = ", ".join(f"{r} {n}" for r, n in replicas.items())
            short = f", {len(replicas)} of {sizes[name]} replicas" if len(replicas) < sizes[name] else ""
            parts.append(f"{task} {protocol}: {counts}{short}")
        lines.append(
            f"- **{name}** (pool of {sizes[name]}): mean ± std over its replicas, each first averaged over its own "
            f"seeds (the spread includes the pretraining's); seeds per replica: {'; '.join(parts)}"
        )
    return lines
