"""Router-Tuning against the static attention drop (LLM-Drop), the comparison of the MindSkip
paper: held-out perplexity against attention executions skipped per sequence.

Rows come from `modlab compare` (one per run, or one per group of runs that differ only in their
seed, with `<metric>_std`). A routed run reports `test/skipped_attention_per_seq` and `test/ppl`;
an evaluation with `eval.static_drop_counts=[1,2,...]` reports the static drop of the n least
important attention layers as `test/ppl_static_drop_<n>` beside `test/ppl_base` (n = 0). Each
routed point is judged against the static curve at the same skipped count (log-perplexity
interpolated linearly between whole layers): better or worse only when the gap exceeds its seeds'
spread (one std of its perplexity).
"""

from __future__ import annotations

import math
import re

SKIPPED = "test/skipped_attention_per_seq"
STATIC = re.compile(r"^test/ppl_static_drop_(\d+)$")


def static_curve(rows: list[dict]) -> list[tuple[int, float]]:
    """(layers dropped, perplexity) of the first row that holds a static-drop curve, with the base
    at 0; empty when no row does."""
    for row in rows:
        points = {int(m.group(1)): row[k] for k in row if (m := STATIC.match(k)) and _finite(row[k])}
        if points:
            if _finite(row.get("test/ppl_base")):
                points[0] = row["test/ppl_base"]
            return sorted(points.items())
    return []


def static_at(curve: list[tuple[int, float]], skipped: float) -> float | None:
    """The static drop's perplexity at a (fractional) skipped count, log-linear between its
    points; None outside the curve."""
    for (n0, p0), (n1, p1) in zip(curve, curve[1:]):
        if n0 <= skipped <= n1:
            t = (skipped - n0) / (n1 - n0)
            return math.exp((1 - t) * math.log(p0) + t * math.log(p1))
    return None


def skip_pareto_rows(points: list[dict], curve: list[tuple[int, float]]) -> list[dict]:
    """One row per routed point: skipped, perplexity (± std over seeds), the static drop at the
    same skipped count, and the verdict."""
    out = []
    for p in points:
        if not (_finite(p.get(SKIPPED)) and _finite(p.get("test/ppl"))):
            continue
        ppl, std = p["test/ppl"], p.get("test/ppl_std")
        static = static_at(curve, p[SKIPPED])
        if static is None:
            verdict = "no static point at this budget"
        elif not _finite(std) or std == 0:
            verdict = "better (one seed)" if ppl < static else "worse (one seed)"
        elif ppl + std < static:
            verdict = "better beyond the seed spread"
        elif ppl - std > static:
            verdict = "worse beyond the seed spread"
        else:
            verdict = "within the seed spread"
        out.append(
            {
                "label": p["label"],
                "n": p.get("n", 1),
                "skipped_per_seq": p[SKIPPED],
                "skipped_std": p.get(f"{SKIPPED}_std"),
                "ppl": ppl,
                "ppl_std": std,
                "static_drop_ppl": static,
                "verdict": verdict,
            }
        )
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and v == v and abs(v) != float("inf")
