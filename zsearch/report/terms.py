"""The judges' terms in the report: each term per trial, how the terms correlate, and for a
Pareto study the front with its renders.

Read from the trials alone: each trial records its mean per term (user attribute `terms`; older
studies have `style`, `prompt` and `identity`).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from zsearch.study.records import FULL_GRID, GRID as GRID_ATTR, ROLE, SCORE, TERMS, is_partial
from zsearch.report.page import Block, Heading, Image, Para, Table

LEGACY_TERMS = ("style", "prompt", "identity")


def trial_terms(trial: FrozenTrial) -> dict[str, float]:
    terms = trial.user_attrs.get(TERMS)
    if isinstance(terms, dict):
        return {k: float(v) for k, v in terms.items()}
    return {k: float(trial.user_attrs[k]) for k in LEGACY_TERMS if isinstance(trial.user_attrs.get(k), (int, float))}


def pearson(xs: list[float], ys: list[float]) -> Optional[float]:
    """Pearson's r, or None when either side does not vary (or fewer than 3 pairs)."""
    pairs = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return None
    mx = sum(x for x, _ in pairs) / len(pairs)
    my = sum(y for _, y in pairs) / len(pairs)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx = sum((x - mx) ** 2 for x, _ in pairs)
    syy = sum((y - my) ** 2 for _, y in pairs)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def section(study: optuna.Study, folder: Path, store=None, max_rows: int = 40) -> list[Block]:
    # Complete trials only, as everywhere in the report: a trial stopped early judged only some jobs.
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if trial_terms(t) and not is_partial(t)]
    if not complete:
        return []
    names = list(dict.fromkeys(name for t in complete for name in trial_terms(t)))
    blocks: list[Block] = [Heading(2, "What each judge said")]
    ranked = sorted(complete, key=lambda t: float(t.user_attrs.get(SCORE, t.values[0])), reverse=True)
    shown = ranked[:max_rows]
    n = len(complete)
    which = f"The top {len(shown)} of the {n}" if len(shown) < n else f"The {n}"
    blocks.append(Para(f"Each term is the trial's mean over its renders; the score is their weighted sum. "
                       f"{which} complete trial{'s' if n != 1 else ''}, best score first (trials stopped early are "
                       f"left out)."))
    rows = []
    for t in shown:
        terms = trial_terms(t)
        rows.append([str(t.number), str(t.user_attrs.get(ROLE, "")),
                     *(f"{terms[n]:.4f}" if n in terms else "" for n in names),
                     f"{float(t.user_attrs.get('score', t.values[0])):.4f}"])
    blocks.append(Table(["trial", "role", *names, "score"], rows))
    if len(names) >= 2:
        columns = {n: [trial_terms(t).get(n, math.nan) for t in complete] for n in names}
        matrix = [[pearson(columns[a], columns[b]) if a != b else 1.0 for b in names] for a in names]
        blocks.append(Para("How the terms move together over the trials (Pearson's r; near 1: they reward the "
                           "same weightings, near -1: one is bought with the other, blank: a term did not vary)."))
        blocks.append(Table(["", *names], [[a, *("" if r is None else f"{r:+.2f}" for r in row)]
                                           for a, row in zip(names, matrix)]))
    if len(study.directions) > 1:
        blocks += _front(study, folder, store)
    return blocks


def _front(study: optuna.Study, folder: Path, store) -> list[Block]:
    front = sorted(study.best_trials, key=lambda t: t.number)
    metric_names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    blocks: list[Block] = [Heading(3, "The Pareto front"),
                           Para(f"{len(front)} trial(s) where no other trial is better on every objective "
                                f"({', '.join(metric_names)}); each with its renders (a column per prompt).")]
    blocks.append(Table(["trial", *metric_names], [[str(t.number), *(f"{v:.4f}" for v in t.values)] for t in front]))
    for t in front:
        picture = _grid(store, t)
        if picture is None:
            continue
        name = f"front-{t.number:05d}.png"
        (folder / name).write_bytes(picture)
        values = ", ".join(f"{n} {v:.4f}" for n, v in zip(metric_names, t.values))
        blocks += [Para(f"Trial {t.number}: {values}."), Image(name, f"trial {t.number} renders")]
    return blocks


def _grid(store, trial: FrozenTrial) -> Optional[bytes]:
    """The trial's grid as PNG bytes: its full-size grid when kept, else its thumbnail (JPEG)."""
    if store is None:
        return None
    for artifact in (trial.user_attrs.get(FULL_GRID), trial.user_attrs.get(GRID_ATTR)):
        if not artifact:
            continue
        try:
            with store.open_reader(artifact) as reader:
                data = reader.read()
        except Exception:  # noqa: BLE001 - a missing artifact only costs the picture
            continue
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return data
        try:
            from PIL import Image as PILImage
            out = io.BytesIO()
            PILImage.open(io.BytesIO(data)).convert("RGB").save(out, format="PNG")
            return out.getvalue()
        except Exception:  # noqa: BLE001 - not an image: no picture
            continue
    return None
