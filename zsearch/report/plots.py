"""The report's PNG plots, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot state).

Each function draws one figure from StudyFacts and writes it atomically; it returns False (and
writes nothing) when there is nothing to draw.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from zsearch.study import records
from zsearch.util.atomic import atomic_path
from zsearch.report.facts import StudyFacts, is_screening, trial_score

DPI = 110
MAX_BARS = 30  # importance bars shown; the rest are listed as a count
MAX_SLICES = 36  # small multiples shown


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def _baseline_band(ax, facts: StudyFacts, horizontal: bool = True) -> None:
    """The baseline's score as a line, with ±1σ of its seed noise as a band around it."""
    base = facts.score(facts.baseline)
    if base is None:
        return
    line, span = (ax.axhline, ax.axhspan) if horizontal else (ax.axvline, ax.axvspan)
    line(base, color="black", lw=1, ls="--", label=f"baseline {base:.4f}")
    if facts.noise is not None and facts.noise.std > 0:
        s = facts.noise.std
        span(base - s, base + s, color="grey", alpha=0.25, lw=0, label=f"baseline ± seed noise (σ {s:.4f})")


def _mean_so_far(trial: FrozenTrial):
    """A trial stopped early: the mean of the jobs it ran (not its stand-in score); else None."""
    if trial.state == TrialState.COMPLETE and records.is_partial(trial):
        ran = [x for x in records.job_scores(trial) or [] if x == x]
    elif trial.state == TrialState.PRUNED:
        ran = list(trial.intermediate_values.values())
    else:
        return None
    return sum(ran) / len(ran) if ran else None


def history(facts: StudyFacts, path: Path) -> bool:
    """Score per trial, the running best, the baseline with its noise band, validation scores."""
    complete = sorted(facts.complete, key=lambda t: t.number)
    if not complete:
        return False
    fig = Figure(figsize=(9, 4.8))
    ax = fig.add_subplot()
    _baseline_band(ax, facts)
    search = [t for t in complete if not is_screening(t)]
    screens = [t for t in complete if is_screening(t)]
    ax.scatter([t.number for t in search], [trial_score(t) for t in search], s=14, color="tab:blue",
               label="trial score", zorder=3)
    if screens:
        ax.scatter([t.number for t in screens], [trial_score(t) for t in screens], s=14, color="tab:grey",
                   marker="s", label="screening trial", zorder=3)
    stopped = [(t.number, m) for t in facts.trials if (m := _mean_so_far(t)) is not None]
    if stopped:
        ax.scatter([n for n, _ in stopped], [m for _, m in stopped], s=18, marker="x", color="tab:orange",
                   label="stopped early (mean of the jobs it ran)", zorder=3)
    best, xs, ys = -math.inf, [], []
    for t in complete:
        best = max(best, trial_score(t))
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="tab:red", lw=1.5, label="best so far")
    if facts.validation is not None:
        rows = facts.validation.rows
        ax.scatter([r.trial for r in rows], [r.validation for r in rows], s=40, marker="D",
                   facecolors="none", edgecolors="tab:green", label="held-out validation score", zorder=4)
    if facts.best is not None:
        ax.scatter([facts.best.number], [trial_score(facts.best)], s=160, marker="*", color="gold",
                   edgecolors="black", label=f"best (trial {facts.best.number})", zorder=5)
    ax.set_xlabel("trial")
    ax.set_ylabel(facts.metric_names[0] if not facts.pareto else "weighted score")
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    return True


def pareto(facts: StudyFacts, front: list[FrozenTrial], path: Path) -> bool:
    """Two objectives: every trial's (style, prompt), the Pareto front, the baseline, the pick."""
    complete = [t for t in facts.complete if t.values and len(t.values) >= 2]
    if not complete:
        return False
    fig = Figure(figsize=(7, 5.5))
    ax = fig.add_subplot()
    ax.scatter([t.values[0] for t in complete], [t.values[1] for t in complete], s=14, color="tab:blue",
               alpha=0.6, label="trial")
    front = sorted(front, key=lambda t: t.values[0])
    ax.plot([t.values[0] for t in front], [t.values[1] for t in front], "o-", color="tab:red", ms=5,
            label=f"Pareto front ({len(front)} trials)")
    if facts.baseline is not None:
        ax.scatter([facts.baseline.values[0]], [facts.baseline.values[1]], s=120, marker="X", color="black",
                   label="baseline", zorder=5)
    if facts.best is not None:
        ax.scatter([facts.best.values[0]], [facts.best.values[1]], s=200, marker="*", color="gold",
                   edgecolors="black", label=f"picked (trial {facts.best.number})", zorder=6)
    names = facts.metric_names if len(facts.metric_names) >= 2 else ["style", "prompt"]
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title("Style vs prompt: the Pareto front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def importance(estimates: dict, path: Path) -> bool:
    """Bars of importance.Estimate values with their bootstrap intervals as error bars."""
    if not estimates:
        return False
    top = list(estimates.items())[:MAX_BARS][::-1]
    fig = Figure(figsize=(8, 0.8 + 0.28 * len(top)))
    ax = fig.add_subplot()
    names = [name for name, _ in top]
    values = [e.value for _, e in top]
    errors = [[max(0.0, e.value - e.low) for _, e in top], [max(0.0, e.high - e.value) for _, e in top]]
    ax.barh(names, values, xerr=errors, color="tab:blue", ecolor="black", capsize=2)
    ax.set_xlabel("importance (PED-ANOVA over the complete trials, sums to 1); whiskers: 90 % bootstrap interval")
    hidden = len(estimates) - len(top)
    ax.set_title("Parameter importance" + (f" (top {len(top)}; {hidden} more not shown)" if hidden else ""))
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
    return True


def slices(facts: StudyFacts, names: list[str], path: Path) -> bool:
    """Small multiples: score against each parameter's value, coloured by trial number."""
    fig = slices_figure(facts, names)
    if fig is None:
        return False
    _save(fig, path)
    return True


def slices_figure(facts: StudyFacts, names: list[str]):
    """The slice plots' figure (one axes per parameter, x over its whole search range), or None."""
    complete = [t for t in facts.complete if t.params]
    names = [n for n in names if any(n in t.params for t in complete)][:MAX_SLICES]
    if not names:
        return None
    cols = min(6, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(max(2.3 * cols, 6.0), 2.0 * rows + 0.5))
    score = facts.weighted if facts.pareto else trial_score
    base_score = score(facts.baseline) if facts.baseline is not None else None
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        points = [t for t in complete if name in t.params]
        ax.scatter([t.params[name] for t in points], [score(t) for t in points], s=8,
                   c=[t.number for t in points], cmap="viridis")
        if facts.baseline is not None and name in facts.baseline.params:
            ax.axvline(facts.baseline.params[name], color="black", lw=0.8, ls="--")
        if base_score is not None:
            ax.axhline(base_score, color="black", lw=0.6, ls=":")
        if facts.best is not None and name in facts.best.params:
            ax.scatter([facts.best.params[name]], [score(facts.best)], s=60, marker="*", color="red", zorder=4)
        if name in facts.ranges:  # the whole range searched: a best at an end shows as one
            low, high = facts.ranges[name]
            pad = 0.03 * (high - low)
            ax.set_xlim(low - pad, high + pad)
            for end in (low, high):
                ax.axvline(end, color="grey", lw=0.6)
        ax.set_title(name, fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle("Score of each complete trial vs each parameter, over its search range (grey: the range's ends)\n"
                 "dashed: baseline value · dotted: baseline score · ★ best · colour: trial number (dark = early)",
                 fontsize=8)
    return fig


def screening(facts: StudyFacts, path: Path) -> bool:
    """Each parameter alone at its low and high end: the change from the baseline's score."""
    base = facts.score(facts.baseline)
    if not facts.screening or base is None:
        return False
    rows = sorted(facts.screening.items(), key=lambda kv: kv[1].effect)[-MAX_BARS * 2:]
    fig = Figure(figsize=(8, 0.9 + 0.32 * len(rows)))
    ax = fig.add_subplot()
    ys = range(len(rows))
    low = [(r.low - base) if r.low is not None else 0.0 for _, r in rows]
    high = [(r.high - base) if r.high is not None else 0.0 for _, r in rows]
    ax.barh([y - 0.2 for y in ys], low, height=0.4, color="tab:blue", label="at its low end")
    ax.barh([y + 0.2 for y in ys], high, height=0.4, color="tab:orange", label="at its high end")
    if facts.noise is not None and facts.noise.std > 0:
        ax.axvspan(-facts.noise.std, facts.noise.std, color="grey", alpha=0.25, lw=0,
                   label=f"seed noise ±σ ({facts.noise.std:.4f})")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(list(ys), [f"{name} (frozen)" if r.frozen else name for name, r in rows], fontsize=8)
    for label, (_, r) in zip(ax.get_yticklabels(), rows):
        if r.frozen:
            label.set_color("grey")
    ax.set_xlabel("score change from the baseline")
    ax.set_title("Screening: one parameter at a time")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    return True


def validation(facts: StudyFacts, path: Path) -> bool:
    """Training score against held-out score: points below the diagonal lost on unseen data."""
    if facts.validation is None:
        return False
    rows = facts.validation.rows
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    lo = min(min(r.train for r in rows), min(r.validation for r in rows))
    hi = max(max(r.train for r in rows), max(r.validation for r in rows))
    pad = (hi - lo) * 0.1 or 0.01
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=0.8, ls="--", label="train = validation")
    for r in rows:
        style = dict(marker="X", color="black", s=90) if r.baseline else dict(marker="o", color="tab:blue", s=30)
        ax.scatter([r.train], [r.validation], zorder=3, **style)
        ax.annotate("baseline" if r.baseline else str(r.trial), (r.train, r.validation), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    chosen = next((r for r in rows if r.trial == facts.validation.chosen), None)
    if chosen is not None:
        ax.scatter([chosen.train], [chosen.validation], s=220, facecolors="none", edgecolors="red", lw=1.5,
                   label=f"chosen (trial {chosen.trial})", zorder=4)
    ax.set_xlabel("training score")
    ax.set_ylabel("held-out validation score")
    ax.set_title("Train vs validation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True

