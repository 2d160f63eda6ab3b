"""Spread over seeds: mean, sample std, and the 95 % Student-t interval of the mean; paired
differences of two arms measured on the same seeds. Used wherever modlab reports a result of
several seeds (modlab compare, make reproduce, the interactions job)."""

from __future__ import annotations

import math


def spread(values: list[float]) -> dict:
    """{mean, std (sample; 0 for one value), n, ci95 (half-width of the 95 % t-interval; None for one value)}."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    ci = None
    if n > 1:
        # scikit-learn / SciPy take a second to import: only when this runs
        from scipy.stats import t as student_t

        ci = float(student_t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci95": ci}


def spread_by(rows: list[dict], keys: tuple[str, ...], value: str) -> list[dict]:
    """{*keys, mean, std, n, ci95} of `value` per group of `keys`."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(float(r[value]))
    return [{**dict(zip(keys, k)), **spread(v)} for k, v in groups.items()]


def paired_difference(rows: list[dict], arm: str, a: str, b: str, keys: tuple[str, ...], value: str) -> list[dict]:
    """Per group of `keys`: `value` of arm a minus arm b, paired by `seed`; mean, std, n, ci95 and
    whether the interval excludes 0 (the difference exceeds the seed spread; never with one seed)."""
    by: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in rows:
        by.setdefault(tuple(r[k] for k in keys), {}).setdefault(r[arm], {})[r["seed"]] = float(r[value])
    out = []
    for k, arms in by.items():
        seeds = sorted(set(arms.get(a, {})) & set(arms.get(b, {})))
        if not seeds:
            continue
        st = spread([arms[a][s] - arms[b][s] for s in seeds])
        exceeds = st["ci95"] is not None and abs(st["mean"]) > st["ci95"]
        out.append({**dict(zip(keys, k)), **st, "exceeds_spread": exceeds})
    return out
