"""`zsearch report`: a real Optuna study (SQLite, populated by a small optimisation of a known
function with the attributes the search records), and a finished demo study when the search runs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from PIL import Image

from search_helpers import demo_config, zsearch
from zsearch.cli import main
from zsearch.settings.load import parse_config
from zsearch.report import write_report
from zsearch.study.opening import open_existing_study
from zsearch.report.facts import duration, gather
from zsearch.report.sections import HEADINGS

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {"a.ratio": [0.0, 1.5], "a.attn": [0.0, 2.0], "a.layers.0-9": [0.0, 2.0], "a.layers.10-19": [0.0, 2.0]}
BASELINE = {"a.ratio": 1.0, "a.attn": 1.0, "a.layers.0-9": 1.0, "a.layers.10-19": 1.0}
OPTIMUM = {"a.ratio": 1.2, "a.attn": 1.6}  # the layer bands do not matter at all
PROMPTS = ["a lighthouse", "a bowl of oranges"]


def known_score(params: dict) -> float:
    """A known function: peaks at OPTIMUM; layers.* have no effect."""
    return 0.8 - 0.05 * (params["a.ratio"] - 1.2) ** 2 - 0.02 * (params["a.attn"] - 1.6) ** 2


def _config(tmp_path: Path, name: str = "synth", **extra):
    data = {"name": name, "loras": [{"path": "a.safetensors", "search": {"ratio": [0.0, 1.5]}}],
            "references": "refs", "prompts": PROMPTS, "output": str(tmp_path / "out" / name), **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_config(data, path), path


def build_study(config, n_trials: int = 40, screening: bool = True, validation: bool = True,
                noise: bool = True, pareto: bool = False) -> optuna.Study:
    """A study in the config's SQLite storage laid out as `zsearch run` lays it out: the baseline,
    the screening trials, noise and screening analysis, then the main search over the parameters
    screening did not freeze, then validation of the top trials. Built in memory (fast), then
    copied into the config's SQLite storage with Optuna's own copy_study."""
    study = optuna.create_study(directions=["maximize", "maximize"] if pareto else ["maximize"],
                                sampler=optuna.samplers.TPESampler(seed=0))
    study.set_user_attr("fingerprint", {"prompts": PROMPTS, "seeds": [1, 2]})
    study.set_user_attr("space", SPACE)
    study.enqueue_trial(BASELINE, user_attrs={"role": "baseline"})
    if screening:
        for name, (low, high) in SPACE.items():
            for end, value in (("low", low), ("high", high)):
                study.enqueue_trial({**BASELINE, name: value}, user_attrs={"role": f"screen:{name}:{end}"})
    frozen: set[str] = set()

    def objective(trial):
        params = dict(BASELINE)
        params.update({name: trial.suggest_float(name, low, high) for name, (low, high) in SPACE.items()
                       if name not in frozen})
        score = known_score(params)
        if trial.number == 15 and not pareto:
            trial.set_user_attr("fail_reason", "CUDA out of memory even at batch size 1")
            raise RuntimeError("oom")
        per_prompt = [score + 0.001, score - 0.001]
        if not pareto:  # Optuna reports intermediate values of single-objective trials only
            for step, value in enumerate(per_prompt):
                trial.report(value, step)
        if trial.number in (20, 21) and not pareto:
            raise optuna.TrialPruned()
        style, prompt_score = score, 0.3 - 0.1 * abs(params["a.ratio"] - 0.5)
        trial.set_user_attr("score", score if not pareto else style + 0.3 * prompt_score)
        trial.set_user_attr("per_prompt", per_prompt)
        trial.set_user_attr("style", style)
        trial.set_user_attr("prompt", prompt_score)
        trial.set_user_attr("seconds", {"render": 1.0, "score": 0.1})
        return (style, prompt_score) if pareto else score

    first = 1 + (2 * len(SPACE) if screening else 0)
    study.optimize(objective, n_trials=min(first, n_trials))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    base_score = complete[0].user_attrs["score"]
    if noise:
        scores = [base_score, base_score + 0.004, base_score - 0.003, base_score + 0.001]
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1))
        study.set_user_attr("noise", {"mean": mean, "std": std, "scores": scores})
    if screening:
        result = {}
        for name in SPACE:
            ends = {t.user_attrs["role"].rsplit(":", 1)[1]: t.user_attrs["score"] for t in complete
                    if t.user_attrs.get("role", "").startswith(f"screen:{name}:")}
            effect = max(abs(v - base_score) for v in ends.values())
            result[name] = {**ends, "effect": effect, "frozen": effect <= 0.003}
        study.set_user_attr("screening", result)
        frozen.update(name for name, row in result.items() if row["frozen"])
    if n_trials > first:
        study.optimize(objective, n_trials=n_trials - first, catch=(RuntimeError,))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if validation:
        ranked = sorted((t for t in complete if t.user_attrs.get("role") != "baseline"),
                        key=lambda t: -t.user_attrs["score"])[:3]
        # Held out, the training best loses more than the runner-up: validation chooses the runner-up.
        rows = [{"trial": 0, "train": base_score, "validation": base_score - 0.002, "baseline": True}]
        for rank, t in enumerate(ranked):
            drop = 0.02 if rank == 0 else 0.004 + 0.001 * rank
            rows.append({"trial": t.number, "train": t.user_attrs["score"],
                         "validation": t.user_attrs["score"] - drop, "baseline": False})
        chosen = max(rows, key=lambda r: r["validation"])["trial"]
        study.set_user_attr("validation", {"baseline": base_score - 0.002, "chosen": chosen, "rows": rows,
                                           "seeds": [1001, 1002], "prompts": 2})
    config.out_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(config.out_dir / 'study.db').resolve()}"
    optuna.copy_study(from_study_name=study.study_name, from_storage=study._storage, to_storage=storage,
                      to_study_name=config.name)
    return optuna.load_study(study_name=config.name, storage=storage)


def _png_ok(path: Path) -> None:
    assert path.is_file(), path
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100


def _number_after(text: str, label: str) -> float:
    match = re.search(rf"\| {re.escape(label)} \| ([+-]?[0-9.]+) \|", text)
    assert match, f"no '{label}' row in the summary table"
    return float(match.group(1))


def test_duration_reads_like_a_clock():
    assert [duration(s) for s in (0.42, 41, 192, 27720, None)] == ["0.4 s", "41 s", "3 min 12 s", "7 h 42 min",
                                                                  "unknown"]


def test_report_from_a_full_study_has_every_section_and_the_study_s_numbers(tmp_path):
    config, path = _config(tmp_path)
    study = build_study(config, n_trials=60)
    # best.png and best.yaml as the search writes them.
    Image.new("RGB", (200, 120), "white").save(config.out_dir / "best.png")
    validation = study.user_attrs["validation"]
    (config.out_dir / "best.yaml").write_text(yaml.safe_dump({"info": {"trial": validation["chosen"]}}))

    index = write_report(config)
    folder = config.out_dir / "report"
    assert index == folder / "index.md"
    text = index.read_text()
    html = (folder / "index.html").read_text()
    for key, heading in HEADINGS.items():
        assert f"\n## {heading}\n" in text, heading
        assert f"<h2>{heading}</h2>" in html
    for png in ("history.png", "importance.png", "screening.png", "slices.png", "validation.png", "best.png"):
        _png_ok(folder / png)
        assert f"]({png})" in text and f'src="{png}"' in html
    assert (folder / "best.png").read_bytes() == (config.out_dir / "best.png").read_bytes()

    # The summary's numbers, against the study computed independently here.
    trials = study.trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    baseline = next(t for t in complete if t.user_attrs.get("role") == "baseline")
    chosen = trials[validation["chosen"]]
    train_best = max(complete, key=lambda t: t.value)
    assert chosen.number != train_best.number  # the construction: validation overrules training
    std = study.user_attrs["noise"]["std"]
    assert _number_after(text, "best trial") == chosen.number
    assert _number_after(text, "best score") == pytest.approx(chosen.value, abs=5e-5)
    assert _number_after(text, "baseline score") == pytest.approx(baseline.value, abs=5e-5)
    assert _number_after(text, "gain") == pytest.approx(chosen.value - baseline.value, abs=1e-4)
    assert _number_after(text, "seed noise σ") == pytest.approx(std, abs=5e-5)
    assert _number_after(text, "gain / σ") == pytest.approx((chosen.value - baseline.value) / std, abs=0.06)
    row = next(r for r in validation["rows"] if r["trial"] == chosen.number)
    assert _number_after(text, "validation score (best)") == pytest.approx(row["validation"], abs=5e-5)
    assert _number_after(text, "validation score (baseline)") == pytest.approx(validation["baseline"], abs=5e-5)
    counts = re.search(r"\| trials \| (\d+) complete, (\d+) stopped early, (\d+) failed \|", text).groups()
    assert tuple(map(int, counts)) == (len(complete), 2, 1)
    assert "CUDA out of memory even at batch size 1 ×1" in text
    wall = (max(t.datetime_complete for t in trials if t.datetime_complete)
            - min(t.datetime_start for t in trials if t.datetime_start)).total_seconds()
    assert f"| wall time | {duration(wall)} |" in text
    # The plain sentence, with the same numbers.
    gain = chosen.value - baseline.value
    assert (f"scores {chosen.value:.4f} vs {baseline.value:.4f} for plain stacking "
            f"({gain:+.4f}, {gain / std:.1f}× the baseline's seed noise)") in text
    assert f"Validation chose it over the training best (trial {train_best.number})" in text

    # Importance: PED-ANOVA ranks the parameters that matter above the ones that do not.
    ranked = re.search(r"sum to 1\) ranks: (.*?)\. Each figure", text).group(1)
    assert ranked.split(" ")[0] in ("a.ratio", "a.attn")
    # Screening: the layer bands have no effect, so they were frozen, left out of the main search
    # and of the importance, and the report says so.
    assert "2 stayed within the noise band and were frozen at their baseline value for the main search: " \
           "a.layers.0-9, a.layers.10-19" in text
    assert "Parameters frozen by screening are not ranked (2: a.layers.0-9, a.layers.10-19)" in text
    assert "a.layers" not in ranked
    # The train-vs-validation sentence: plain signed words, no double negatives.
    tops = [r for r in validation["rows"] if not r["baseline"]]
    base_row = next(r for r in validation["rows"] if r["baseline"])
    mean_gap = sum(r["train"] - r["validation"] for r in tops) / len(tops)
    assert (f"Held out, the top {len(tops)} trials score on average {mean_gap:.4f} lower than in training; the "
            f"baseline scores {base_row['train'] - base_row['validation']:.4f} lower than in training.") in text
    assert "lose -" not in text and "loses" not in text
    # The train-vs-validation table lists every validated trial.
    for r in validation["rows"]:
        assert re.search(rf"\| {r['trial']} \| (baseline|top trial) \| {r['train']:.4f} \| {r['validation']:.4f} \|",
                         text)


def test_each_section_is_present_and_says_what_is_missing(tmp_path):
    config, _ = _config(tmp_path, name="bare")
    build_study(config, n_trials=3, screening=False, validation=False, noise=False)
    text = write_report(config).read_text()
    folder = config.out_dir / "report"
    for heading in HEADINGS.values():
        assert f"\n## {heading}\n" in text
    assert "seed noise was not measured" in text
    assert "Held-out validation has not run" in text
    assert "No screening ran for this study" in text
    assert "No best.png yet" in text and "No best.yaml" in text
    assert "No validation data" in text
    _png_ok(folder / "history.png")
    assert not (folder / "screening.png").exists() and not (folder / "validation.png").exists()


def test_a_study_with_no_completed_trial_still_reports(tmp_path):
    config, _ = _config(tmp_path, name="empty")
    config.out_dir.mkdir(parents=True)
    optuna.create_study(study_name="empty", storage=f"sqlite:///{config.out_dir / 'study.db'}",
                        direction="maximize")
    text = write_report(config).read_text()
    for heading in HEADINGS.values():
        assert f"\n## {heading}\n" in text
    assert "no trials yet" in text and "Not enough complete search trials (0)" in text


def test_a_pareto_study_plots_its_front(tmp_path):
    config, _ = _config(tmp_path, name="pareto", objective="pareto")
    study = build_study(config, n_trials=25, screening=False, validation=False, pareto=True)
    text = write_report(config).read_text()
    folder = config.out_dir / "report"
    _png_ok(folder / "pareto.png")
    _png_ok(folder / "importance.png")
    assert not (folder / "history.png").exists()
    facts = gather(study, (1.0, 0.3))
    best = max(study.best_trials, key=lambda t: t.values[0] + 0.3 * t.values[1])
    assert facts.best.number == best.number
    assert f"the pick from the Pareto front is trial {best.number}" in text
    assert f"style {best.values[0]:.4f}, prompt {best.values[1]:.4f}" in text


def test_a_second_report_replaces_the_first_whole(tmp_path):
    config, _ = _config(tmp_path, name="again")
    build_study(config, n_trials=6, screening=False, validation=False)
    folder = config.out_dir / "report"
    write_report(config)
    (folder / "stale.png").write_bytes(b"old")
    write_report(config)
    assert not (folder / "stale.png").exists()
    assert not [p for p in config.out_dir.iterdir() if p.name.startswith(".report")]


def test_report_of_a_missing_study_exits_2_with_one_line(tmp_path):
    _, path = _config(tmp_path, name="never_ran")
    result = zsearch("report", path)  # a real process: exit code, and nothing else on stderr
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no study 'never_ran'" in lines[0] and "zsearch run" in lines[0]
    assert not (tmp_path / "out" / "never_ran").exists()  # nothing created, no empty database


def test_report_of_a_storage_without_the_study_exits_2(tmp_path, capsys):
    config, path = _config(tmp_path, name="other")
    build_study(config, n_trials=2, screening=False, validation=False)
    data = yaml.safe_load(path.read_text())
    data.update(name="renamed", storage=f"sqlite:///{config.out_dir / 'study.db'}")
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text(yaml.safe_dump(data))
    assert main(["report", str(renamed)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no study 'renamed'" in err and "check 'name:'" in err


def test_report_command_writes_the_report(tmp_path, capsys):
    config, path = _config(tmp_path, name="cli")
    build_study(config, n_trials=5, screening=False, validation=False)
    assert main(["report", str(path)]) == 0
    index = config.out_dir / "report" / "index.md"
    assert index.is_file() and (config.out_dir / "report" / "index.html").is_file()
    assert str(index) in capsys.readouterr().out
    assert open_existing_study(config).study_name == "cli"


def test_report_from_a_finished_demo_study(tmp_path, demo_assets):
    """The whole path: `zsearch run` on the tiny demo (noise and validation on), then the report.

    Renders are made smaller and shorter than the demo's: the report reads scores, not pictures."""
    path = demo_config(tmp_path, demo_assets, search={"trials": 3}, noise={"repeats": 1},
                       validation={"top_k": 1}, render={"steps": 2, "width": 32, "height": 32})
    run = zsearch("run", path, "--no-progress")
    assert run.returncode == 0, run.stderr[-2000:]
    config = parse_config(yaml.safe_load(path.read_text()), path)
    assert main(["report", str(path)]) == 0
    folder = config.out_dir / "report"
    text = (folder / "index.md").read_text()
    for heading in HEADINGS.values():
        assert f"\n## {heading}\n" in text, heading
    for png in ("history.png", "importance.png", "slices.png", "validation.png", "best.png"):
        _png_ok(folder / png)
        assert f"]({png})" in text
    assert (folder / "best.png").read_bytes() == (config.out_dir / "best.png").read_bytes()

    study = open_existing_study(config)
    best_trial = yaml.safe_load((config.out_dir / "best.yaml").read_text())["info"]["trial"]
    best = study.trials[best_trial]
    baseline = next(t for t in study.trials if t.user_attrs.get("role") == "baseline")
    assert _number_after(text, "best trial") == best_trial
    assert _number_after(text, "best score") == pytest.approx(best.user_attrs["score"], abs=5e-5)
    assert _number_after(text, "baseline score") == pytest.approx(baseline.user_attrs["score"], abs=5e-5)
    assert _number_after(text, "seed noise σ") == pytest.approx(study.user_attrs["noise"]["std"], abs=5e-5)
    validation = study.user_attrs["validation"]
    assert _number_after(text, "validation score (baseline)") == pytest.approx(validation["baseline"], abs=5e-5)
    assert f"best.yaml and best.safetensors in {config.out_dir} hold trial {best_trial}." in text


def test_the_summary_states_the_paired_gain_its_interval_and_a_verdict(tmp_path):
    """Per-job records (as the search writes them): the report pairs the held-out jobs."""
    import torch

    from zsearch.study import records

    from zsearch.study import stats
    from zsearch.search.evaluate import Evaluation

    config, _ = _config(tmp_path, name="paired")
    config.out_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=config.name, direction="maximize",
                                storage=f"sqlite:///{(config.out_dir / 'study.db').resolve()}")

    def add(jobs, role=None):
        if role:
            study.enqueue_trial(BASELINE, user_attrs={records.ROLE: role})
        trial = study.ask({n: optuna.distributions.FloatDistribution(*b) for n, b in SPACE.items()})
        e = Evaluation(style=jobs[:2], prompt=[0.0, 0.0], combined=jobs[:2], identity=None,
                       images=torch.zeros(len(jobs), 3, 2, 2), jobs=jobs)
        records.write_evaluation(trial, e)
        study.tell(trial, e.value)
        return study.trials[-1]

    base = add([0.50, 0.40, 0.60, 0.45], records.BASELINE_ROLE)
    best = add([0.52, 0.47, 0.61, 0.50])
    held_base, held_best = [0.41, 0.55, 0.38, 0.60, 0.47, 0.52], [0.44, 0.58, 0.40, 0.66, 0.49, 0.57]
    records.write_validation(study, records.Validation(rows=[
        records.ValidationRow(base.number, records.trial_score(base), sum(held_base) / 6, True, held_base),
        records.ValidationRow(best.number, records.trial_score(best), sum(held_best) / 6, False, held_best)],
        chosen=best.number, seeds=[9, 10], prompts=2))
    text = write_report(config, study).read_text()
    c = stats.compare(held_best, held_base)
    assert c.verdict == stats.CONCLUSIVE  # better on all 6 held-out jobs
    assert (f"Paired job by job with the baseline over 6 held-out jobs (prompt × seed), the gain is {c.gain:+.4f} "
            f"(95 % interval {c.low:+.4f} to {c.high:+.4f}; signed-rank p = {c.p:.3g}): conclusive") in text
    assert "| verdict | conclusive (on validation jobs) |" in text


def test_validation_that_held_up_better_than_the_baseline_is_said_so(tmp_path):
    """Top trials scoring higher held out than in training, beyond the noise: the report says they
    held up better (not that a negative difference is "within the noise")."""
    config, _ = _config(tmp_path, name="heldup")
    study = build_study(config, n_trials=12, screening=False, validation=False)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    base = next(t for t in complete if t.user_attrs.get("role") == "baseline")
    tops = sorted((t for t in complete if t is not base), key=lambda t: -t.value)[:2]
    rows = [{"trial": base.number, "train": base.value, "validation": base.value - 0.002, "baseline": True}]
    rows += [{"trial": t.number, "train": t.value, "validation": t.value + 0.004, "baseline": False} for t in tops]
    study.set_user_attr("validation", {"chosen": tops[0].number, "rows": rows, "seeds": [7], "prompts": 2})
    text = write_report(config).read_text()
    std = study.user_attrs["noise"]["std"]
    assert 0.006 > std
    assert ("Held out, the top 2 trials score on average 0.0040 higher than in training; the baseline scores "
            "0.0020 lower than in training.") in text
    assert f"The top trials held up better than the baseline, by 0.0060 (more than the noise σ, {std:.4f})" in text
    assert "within the noise" not in text.split("## Train vs validation")[1]
