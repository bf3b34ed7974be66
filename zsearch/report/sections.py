"""The report's sections, as plain sentences with the numbers, for someone who slept through the run.

Each section is always present; when its data is missing it says so in one line and how to get it.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional

from optuna.trial import FrozenTrial

from zsearch.outputs.provenance import how_to_load
from zsearch.study import records

from zsearch.study import stats
from zsearch.study.choice import CONFIRMATION, PERSON, VALIDATION
from zsearch.report import advice, plots
from zsearch.report import importance as ranking
from zsearch.report.facts import StudyFacts, duration, trial_score
from zsearch.report.page import Block, Heading, Image, Para, Table

HEADINGS = {
    "summary": "Summary",
    "history": "Optimisation history",
    "importance": "Parameter importance",
    "effects": "Effect of each component and band",
    "validation": "Train vs validation",
    "grid": "Baseline vs best",
}
MIN_TRIALS_FOR_IMPORTANCE = 50  # PED-ANOVA wants >= 5 trials in its top 10 %


def f4(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def signed(x: float) -> str:
    return f"{x:+.4f}"


def _trial(trial: Optional[FrozenTrial]) -> str:
    return "none" if trial is None else f"trial {trial.number}"


# ---------------------------------------------------------------- summary

def summary(facts: StudyFacts, config_path: str, best_yaml_trial: Optional[int], out_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, HEADINGS["summary"])]
    blocks.append(Para(_trials_sentence(facts)))
    if facts.best is None:
        blocks.append(Para("No trial has completed yet, so there is no best weighting to report; "
                           f"`zsearch run {config_path}` continues the study."))
        return blocks
    blocks.append(Para(_pareto_sentence(facts) + _gain_sentence(facts) if facts.pareto else _gain_sentence(facts)))
    blocks.append(Para(_noise_sentence(facts, config_path)))
    blocks.append(Para(_validation_sentence(facts, config_path)))
    if facts.chosen_by == PERSON:
        blocks.append(Para(f"You chose {_trial(facts.best)} in `zsearch review`; best.* follow your choice."))
    elif facts.chosen_by == CONFIRMATION:
        blocks.append(Para(_confirmation_sentence(facts)))
    if best_yaml_trial is None:
        blocks.append(Para(f"No best.yaml in {out_dir} yet; `zsearch best {config_path}` writes best.yaml, "
                           f"best.safetensors and best.png."))
    else:
        note = "" if best_yaml_trial == facts.best.number else (
            f" (this report's pick is trial {facts.best.number}; `zsearch best {config_path}` brings them up to date)")
        blocks.append(Para(f"best.yaml and best.safetensors in {out_dir} hold trial {best_yaml_trial}{note}."))
        first, *ways = how_to_load(out_dir / "best.safetensors")
        blocks.append(Para(first[0].upper() + first[1:] + " " + "; ".join(w.strip() for w in ways) + "."))
    advice_text = advice.advise(facts, config_path)
    if advice_text:
        blocks.append(Para("**What next:** " + " ".join(advice_text)))
    blocks.append(_key_numbers(facts))
    return blocks


def _trials_sentence(facts: StudyFacts) -> str:
    c = facts.tally
    if not facts.trials:
        return f"Study `{facts.name}` has no trials yet."
    text = f"Study `{facts.name}`: {c.finished} trials finished — {records.count_words(c)}"
    if facts.fail_reasons:
        text += " (failed: " + "; ".join(f"{reason} ×{n}" for reason, n in facts.fail_reasons.items()) + ")"
    text += "."
    if c.screening:
        text += f" {c.screening} of the complete trials are screening trials."
    if c.stopped_early:
        text += (" A trial stopped early ran only some of its jobs before the pruner judged it worse than the best: "
                 "its score is a stand-in, so it is never picked, validated, ranked for importance or drawn in the "
                 "slice plots.")
    text += f" Time spent: {duration(facts.wall_seconds)} of wall time"
    if facts.trial_seconds is not None:
        text += f", {duration(facts.trial_seconds)} per complete trial"
    if facts.workers > 1:
        text += f", {facts.workers} workers"
    return text + "."


def _pareto_sentence(facts: StudyFacts) -> str:
    w_style, w_prompt = facts.objective_weights
    best = facts.best
    text = (f"This study optimises two objectives, style and prompt. Weighted by the objective "
            f"(style {w_style:g}, prompt {w_prompt:g}), the pick from the Pareto front is trial {best.number}: "
            f"style {f4(best.values[0])}, prompt {f4(best.values[1])}")
    if facts.baseline is not None:
        text += f" (plain stacking: style {f4(facts.baseline.values[0])}, prompt {f4(facts.baseline.values[1])})"
    return text + ". "


def _gain_sentence(facts: StudyFacts) -> str:
    best, base = facts.best, facts.baseline
    score = trial_score(best)
    what = "The picked weighting" if facts.validation_current and facts.validation else "The best weighting"
    if base is None:
        return (f"{what} ({_trial(best)}) scores {f4(score)}; the baseline (plain stacking) has not completed, "
                f"so there is nothing to compare it with.")
    if best.number == base.number:
        return (f"No weighting beat plain stacking: the baseline ({_trial(base)}, score {f4(score)}) is still "
                f"the best.")
    gain = facts.gain
    text = f"{what} ({_trial(best)}) scores {f4(score)} vs {f4(trial_score(base))} for plain stacking ({signed(gain)}"
    comparison, where = facts.comparison
    if comparison is not None:
        return text + " on the training jobs). " + paired_sentence(comparison, where)
    ratio = facts.gain_in_noise
    if ratio is None:
        return text + ")."
    text += f", {ratio:.1f}× the baseline's seed noise). "
    if ratio >= 2:
        text += "That is well outside the noise: a real improvement on the training prompts and seeds."
    elif ratio >= 1:
        text += "That is above the noise but within 2σ of it: suggestive, not conclusive."
    else:
        text += "That is within the noise: nothing clearly better than plain stacking was found."
    return text


VERDICT_WORDS = {
    stats.CONCLUSIVE: "conclusive: a real improvement, not seed noise.",
    stats.SUGGESTIVE: "suggestive, not conclusive: more prompts or seeds would settle it.",
    stats.NO_GAIN: "no gain: nothing clearly better than plain stacking was found.",
}


def paired_sentence(c: stats.Comparison, where: str) -> str:
    jobs = "held-out jobs (prompt × seed)" if where == "validation" else "training jobs (prompt × seed)"
    text = (f"Paired job by job with the baseline over {c.jobs} {jobs}, the gain is {signed(c.gain)} "
            f"(95 % interval {signed(c.low)} to {signed(c.high)}; signed-rank p = {c.p:.3g}): "
            f"{VERDICT_WORDS[c.verdict]}")
    if where == "training":
        text += (" (Measured on the training jobs, where the best of many trials is favoured by luck; "
                 "validation gives the unbiased figure.)")
    return text


def _noise_sentence(facts: StudyFacts, config_path: str) -> str:
    n = facts.noise
    if n is None:
        return (f"The baseline's seed noise was not measured, so no gain can be weighed against it "
                f"(set `noise: {{repeats: 3}}` in {config_path}).")
    scores = ", ".join(f4(s) for s in n.scores)
    sets = f" on {len(n.scores)} seed sets ({scores})" if n.scores else ""
    return f"Seed noise: the baseline scored a mean of {f4(n.mean)}{sets}; standard deviation σ = {f4(n.std)}."


def _validation_sentence(facts: StudyFacts, config_path: str) -> str:
    v = facts.validation
    if v is None:
        return (f"Held-out validation has not run for this study yet; it runs at the end of `zsearch run`, "
                f"or now with `zsearch validate {config_path}`.")
    where = _held_out_set(v)
    if not facts.validation_current:
        return (f"Validation is out of date: the training best ({_trial(facts.train_best)}) was found after it ran, "
                f"so best.* follow the training score for now; `zsearch validate {config_path}` re-runs it.")
    chosen = facts.validation_row(facts.best)
    text = f"On {where} {_trial(facts.best)} scores {f4(chosen.validation if chosen else None)}"
    if v.baseline is not None and chosen is not None:
        text += f" vs {f4(v.baseline)} for plain stacking ({signed(chosen.validation - v.baseline)})"
    text += "."
    if facts.chosen_by == VALIDATION and facts.train_best is not None and facts.best.number != facts.train_best.number:
        lost = facts.validation_row(facts.train_best)
        text += (f" Validation chose it over the training best ({_trial(facts.train_best)}), which scored "
                 f"{f4(lost.train if lost else None)} on training but {f4(lost.validation if lost else None)} "
                 f"held out.")
    return text


def _held_out_set(v) -> str:
    """What validation re-rendered, said as it is: new seeds of the training prompts (the default),
    or held-out prompts of their own."""
    seeds = f"seeds {', '.join(map(str, v.seeds))}" if v.seeds else "other seeds"
    count = f"{v.prompts} " if v.prompts is not None else ""
    if v.same_prompts:
        return f"new seeds of the same {count}prompts ({seeds}, none used in the search)"
    if v.same_prompts is None:  # a study validated by an older zsearch: which prompts is not recorded
        return f"{count}prompts with new seeds ({seeds})"
    return f"{count}held-out prompts with new seeds ({seeds})"


def _confirmation_sentence(facts: StudyFacts) -> str:
    """Confirmation chose the best: on how many new jobs, and against which training best."""
    ranking = facts.confirmation
    row = ranking.row(facts.best.number) if ranking else None
    jobs = f" on {row.jobs} jobs of {row.rounds} new seed sets" if row else " on new seed sets"
    text = f"Confirmation re-rendered the top trials{jobs}; best.* follow {_trial(facts.best)}, the best mean there"
    if facts.train_best is not None and facts.best.number != facts.train_best.number:
        lost = ranking.row(facts.train_best.number) if ranking else None
        text += (f", over the training best ({_trial(facts.train_best)}"
                 + (f", which scored {f4(lost.mean)} there)" if lost else ")"))
    return text + "."


def _interval(c: Optional[stats.Comparison]) -> str:
    return f"{signed(c.gain)} ({signed(c.low)} to {signed(c.high)}), p = {c.p:.3g}" if c else "n/a"


def _key_numbers(facts: StudyFacts) -> Table:
    comparison, where = facts.comparison
    chosen = facts.validation_row(facts.best) if facts.validation_current else None
    rows = [
        ["best trial", str(facts.best.number) if facts.best else "n/a"],
        ["best score", f4(facts.score(facts.best))],
        ["baseline score", f4(facts.score(facts.baseline))],
        ["gain", signed(facts.gain) if facts.gain is not None else "n/a"],
        ["seed noise σ", f4(facts.noise.std) if facts.noise else "not measured"],
        ["gain / σ", f"{facts.gain_in_noise:.1f}" if facts.gain_in_noise is not None else "n/a"],
        ["paired gain (95 % interval)", _interval(comparison)],
        ["verdict", f"{comparison.verdict} (on {where} jobs)" if comparison else "n/a"],
        ["validation score (best)", f4(chosen.validation) if chosen else "n/a"],
        ["validation score (baseline)", f4(facts.validation.baseline) if facts.validation else "n/a"],
        ["trials", records.count_words(facts.tally)],
        ["wall time", duration(facts.wall_seconds)],
    ]
    return Table(["", "value"], rows)


# ---------------------------------------------------------------- history

def history(facts: StudyFacts, folder: Path, front: list[FrozenTrial]) -> list[Block]:
    blocks: list[Block] = [Heading(2, HEADINGS["history"])]
    if facts.pareto:
        if not plots.pareto(facts, front, folder / "pareto.png"):
            return blocks + [Para("No complete trial yet: nothing to plot.")]
        return blocks + [
            Para(f"Every complete trial's style and prompt scores; the {len(front)} trials on the Pareto front "
                 f"(none beats them on both) are joined in red. A two-objective study has no single history: "
                 f"this plot replaces it."),
            Image("pareto.png", "Pareto front"),
        ]
    if not plots.history(facts, folder / "history.png"):
        return blocks + [Para("No complete trial yet: nothing to plot.")]
    complete = sorted(facts.complete, key=lambda t: t.number)
    text = ("Each dot is one complete trial's score; the red line is the best so far, the dashed line the "
            "baseline (plain stacking)")
    text += " and the grey band its ±1σ seed noise." if facts.noise else "."
    if facts.partial:
        text += (f" Orange crosses: the {len(facts.partial)} trials stopped early, at the mean of the jobs they ran "
                 f"(not comparable with complete trials' scores).")
    progress = advice.progression(facts.run, facts.train_best)
    if progress is not None:
        text += " " + advice.progression_sentence(progress)
    base = facts.score(facts.baseline)
    if base is not None:
        threshold = base + (facts.noise.std if facts.noise else 0.0)
        above = sum(1 for t in complete if t is not facts.baseline and trial_score(t) > threshold)
        what = "above the baseline's noise band" if facts.noise else "above the baseline"
        text += f" {above} of {len(complete) - 1} other complete trials scored {what}."
    return blocks + [Para(text), Image("history.png", "optimisation history")]


# ---------------------------------------------------------------- importance

def importance(facts: StudyFacts, folder: Path, estimates: Optional[dict], error: Optional[str]) -> list[Block]:
    """PED-ANOVA over the full search trials, each importance with its bootstrap interval."""
    blocks: list[Block] = [Heading(2, HEADINGS["importance"])]
    n = sum(1 for t in facts.complete if t.params and not records.is_screening(t))
    if error is not None:
        return blocks + [Para(f"Parameter importance could not be computed: {error}.")]
    if not estimates:
        return blocks + [Para(f"Not enough complete search trials ({n}) to estimate parameter importance; "
                              f"it needs at least 2, and {MIN_TRIALS_FOR_IMPORTANCE} for a stable ranking.")]
    plots.importance(estimates, folder / "importance.png")
    left_out = [f"{facts.tally.stopped_early} stopped early (their scores are stand-ins)" if facts.tally.stopped_early
                else "", f"{facts.tally.screening} screening trials (on the axes of the space)" if facts.tally.screening
                else ""]
    left_out = [x for x in left_out if x]
    text = (f"Over the {n} complete search trials" + (f", leaving out {' and '.join(left_out)}" if left_out else "")
            + ", PED-ANOVA (how differently each parameter is distributed in the top 10 % of trials than in the "
              "rest; the importances sum to 1) ranks: " + ranking.describe(estimates)
            + f". Each figure is the median over {ranking.RESAMPLES} resamples of those trials (drawn again with "
              f"replacement), in brackets its {ranking.LEVEL * 100:.0f} % interval. ")
    settled = ranking.settled_leaders(estimates)
    first = next(iter(estimates))
    if sum(e.value for e in estimates.values()) <= 0:
        text += "Every importance is 0: no parameter sets the top trials apart (too few trials, or a flat score)."
    elif settled == 0:
        rivals = [name for name, e in estimates.items() if name != first and e.high >= estimates[first].low][:3]
        text += (f"{first}'s interval overlaps that of {', '.join(rivals)}: which parameter matters most is not "
                 f"settled yet; more trials narrow the intervals.")
    else:
        leaders = ", ".join(list(estimates)[:settled])
        text += f"Settled: {leaders} rank{'s' if settled == 1 else ''} above the rest whatever the resample."
    if n < MIN_TRIALS_FOR_IMPORTANCE:
        text += f" With fewer than {MIN_TRIALS_FOR_IMPORTANCE} complete trials, treat the ranking as rough."
    frozen = [name for name, row in facts.screening.items() if row.frozen and name not in estimates]
    if frozen:
        text += f" Parameters frozen by screening are not ranked ({len(frozen)}: {', '.join(frozen)})."
    text += (" optuna-dashboard's importance chart may rank differently: it runs PED-ANOVA once over every trial "
             "Optuna stores as complete — the stand-in scores of the trials stopped early and the screening "
             "trials included — and shows no interval. This section is the one to go by.")
    return blocks + [Para(text), Image("importance.png", "parameter importance")]


# ---------------------------------------------------------------- effects

def effects(facts: StudyFacts, folder: Path, order: list[str]) -> list[Block]:
    blocks: list[Block] = [Heading(2, HEADINGS["effects"])]
    if facts.screening and plots.screening(facts, folder / "screening.png"):
        frozen = [name for name, row in facts.screening.items() if row.frozen]
        strongest = sorted(((n, r) for n, r in facts.screening.items() if not r.frozen),
                           key=lambda kv: -kv[1].effect)[:3]
        base = facts.score(facts.baseline)
        text = (f"Screening moved each of {len(facts.screening)} parameters alone to the low and high end of its "
                f"range, all others at the baseline.")
        if frozen:
            text += (f" {len(frozen)} stayed within the noise band and were frozen at their baseline value for "
                     f"the main search: {', '.join(frozen)}.")
        else:
            text += " Every parameter moved the score by more than the noise band; none was frozen."
        if strongest:
            text += " Largest effects: " + ", ".join(
                f"{name} ({_screen_change(row, base)})" for name, row in strongest) + "."
        blocks += [Para(text), Image("screening.png", "screening effects")]
    else:
        blocks.append(Para("No screening ran for this study (`search: {screen: true}` runs one before the main "
                           "search); the slice plots below show each parameter's effect instead."))
    if plots.slices(facts, order, folder / "slices.png"):
        shown = min(len(order), plots.MAX_SLICES)
        more = f" (the {shown} most important of {len(order)})" if len(order) > shown else ""
        stopped = " Trials stopped early are left out (their scores are stand-ins)." if facts.partial else ""
        blocks += [Para(f"Score of each complete trial against each parameter{more}, over the parameter's whole search "
                        f"range: a clear slope or peak means the parameter matters; a flat cloud means it does not; "
                        f"a peak at an end of the axis means the best may lie beyond the range. Dashed: the "
                        f"baseline's value; ★: the best trial.{stopped}"),
                   Image("slices.png", "slice plots")]
    else:
        blocks.append(Para("No complete trial with parameters yet: no slice plots."))
    if facts.best is not None and facts.best.params:
        blocks.append(_best_values_table(facts, order))
    return blocks


def _screen_change(row, base: Optional[float]) -> str:
    if base is None:
        return f"effect {row.effect:.4f}"
    ends = [(label, value - base) for label, value in (("low", row.low), ("high", row.high)) if value is not None]
    label, change = max(ends, key=lambda e: abs(e[1])) if ends else ("?", row.effect)
    return f"{signed(change)} at its {label} end"


def _best_values_table(facts: StudyFacts, order: list[str]) -> Table:
    base = facts.baseline.params if facts.baseline is not None else {}
    names = list(dict.fromkeys([*order, *facts.best.params]))
    edges = {b.name: b.side for b in advice.on_bounds(facts.best.params, facts.ranges)}
    rows = []
    for name in names:
        if name not in facts.best.params:
            continue
        low_high = facts.ranges.get(name)
        value = facts.best.params[name]
        frozen = facts.screening.get(name)
        notes = ["frozen" if frozen is not None and frozen.frozen else "",
                 f"on the {edges[name]} end of its range" if name in edges else ""]
        rows.append([name, f"[{low_high[0]:g}, {low_high[1]:g}]" if low_high else "",
                     f"{base[name]:.3f}" if name in base else "", f"{value:.3f}",
                     "; ".join(n for n in notes if n)])
    return Table(["parameter", "range", "baseline", f"best (trial {facts.best.number})", "note"], rows)


# ---------------------------------------------------------------- validation

def validation(facts: StudyFacts, folder: Path, config_path: str) -> list[Block]:
    blocks: list[Block] = [Heading(2, HEADINGS["validation"])]
    v = facts.validation
    if v is None:
        return blocks + [Para(f"No validation data: held-out validation has not run yet "
                              f"(`zsearch validate {config_path}`).")]
    plots.validation(facts, folder / "validation.png")
    rows = []
    for r in sorted(v.rows, key=lambda r: (not r.baseline, -r.validation)):
        notes = []
        if r.trial == v.chosen:
            notes.append("chosen")
        if facts.train_best is not None and r.trial == facts.train_best.number:
            notes.append("training best")
        rows.append([str(r.trial), "baseline" if r.baseline else "top trial", f4(r.train), f4(r.validation),
                     signed(r.gap), ", ".join(notes)])
    table = Table(["trial", "role", "train", "validation", "gap (train − validation)", "note"], rows)
    tops = [r for r in v.rows if not r.baseline]
    base = next((r for r in v.rows if r.baseline), None)
    text = f"Each trial below was re-rendered and re-scored on {_held_out_set(v)}."
    if tops and base is not None:
        mean_gap = statistics.fmean(r.gap for r in tops)
        excess = mean_gap - base.gap
        text += (f" Held out, the top {len(tops)} trials score on average {_change(mean_gap)} in training; "
                 f"the baseline scores {_change(base.gap)} in training.")
        if facts.noise is not None and facts.noise.std > 0:
            sigma = f4(facts.noise.std)
            if excess > facts.noise.std:
                text += (f" The top trials' extra drop ({f4(excess)}) is more than the noise σ ({sigma}): the search "
                         f"partly fitted the training seeds, which is why best.* follow the validation score.")
            elif abs(excess) <= facts.noise.std:
                text += (f" The two differ by {f4(abs(excess))}, within the noise σ ({sigma}): no sign of "
                         f"overfitting.")
            else:
                text += (f" The top trials held up better than the baseline, by {f4(-excess)} (more than the noise "
                         f"σ, {sigma}): no sign of overfitting.")
    return blocks + [Para(text), table, Image("validation.png", "train vs validation")]


def _change(gap: float) -> str:
    """A train − validation gap as words: '0.0023 lower than', '0.0010 higher than', 'the same as'."""
    if abs(gap) < 5e-5:
        return "the same as"
    return f"{f4(abs(gap))} {'lower' if gap > 0 else 'higher'} than"


# ---------------------------------------------------------------- the grid

def grid(facts: StudyFacts, best_png: Optional[Path], config_path: str) -> list[Block]:
    blocks: list[Block] = [Heading(2, HEADINGS["grid"])]
    if best_png is None:
        blocks.append(Para(f"No best.png yet; `zsearch best {config_path}` draws it (the references, the baseline and the best)."))
    else:
        blocks += [Para("Top: the reference images; below, prompt by prompt, a few seeds of plain stacking "
                        "(the baseline) beside the same seeds of the best weighting."),
                   Image("best.png", "references, baseline and best")]
    table = _per_prompt(facts)
    if table is not None:
        blocks.append(table)
    return blocks


def _per_prompt(facts: StudyFacts) -> Optional[Table]:
    def scores(trial):
        values = trial.user_attrs.get(records.PER_PROMPT) if trial is not None else None
        return values if isinstance(values, list) else None

    best, base = scores(facts.best), scores(facts.baseline)
    if best is None or base is None or len(best) != len(base):
        return None
    prompts = facts.prompts if len(facts.prompts) == len(best) else [f"prompt {i}" for i in range(len(best))]
    rows = [[prompt, f4(b0), f4(b1), signed(b1 - b0)] for prompt, b0, b1 in zip(prompts, base, best)]
    return Table(["prompt", "baseline", f"best (trial {facts.best.number})", "change"], rows)

