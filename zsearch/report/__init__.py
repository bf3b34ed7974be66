"""`zsearch report`: results/<name>/report/ — index.md, index.html and PNG plots, from the study alone.

The study's storage is all it needs (plus best.png / best.yaml when they exist), so a report can
be drawn on any machine that reaches the storage, while the search runs or after it.

Must not import search/ (it reads the study, never runs it), review/ or commands/.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Optional

import optuna

from zsearch.settings.schema import Config
from zsearch.util.atomic import make_folder
from zsearch.report import importance, sections, terms
from zsearch.study.opening import open_existing_study
from zsearch.outputs.best import read_best_info
from zsearch.report.facts import StudyFacts, gather, is_screening, trial_score
from zsearch.report.page import Heading, Para, to_html, to_markdown

__all__ = ["write_report", "open_existing_study", "param_importances"]


def param_importances(study: optuna.Study, facts: StudyFacts) -> tuple[Optional[dict], Optional[str]]:
    """PED-ANOVA importances with bootstrap intervals ({name: importance.Estimate}) over the complete
    search trials: partial trials (stand-in scores) and screening trials are left out
    (importance.py says why). Returns (estimates, None), (None, None) when there are too few
    trials, or (None, reason)."""
    trials = [t for t in facts.complete if t.params and not is_screening(t)]
    if len(trials) < 2:
        return None, None
    score = facts.weighted if facts.pareto else trial_score
    try:
        result = importance.importances(importance.scored(trials, score))
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:160]
        return None, f"{exc.__class__.__name__}: {first}"
    # Parameters frozen by screening were not searched afterwards: an importance means nothing for them.
    frozen = {name for name, row in facts.screening.items() if row.frozen}
    return {name: value for name, value in result.items() if name not in frozen}, None


def _best_yaml_trial(folder: Path) -> Optional[int]:
    trial = (read_best_info(folder) or {}).get("trial")
    return trial if isinstance(trial, int) else None


def build(config: Config, study: optuna.Study, folder: Path) -> list:
    """Draw every plot into `folder` and return the page's blocks."""
    weights = (config.objective.style, config.objective.prompt)
    facts = gather(study, objective_weights=weights)
    importances, error = param_importances(study, facts)
    order = list(importances) if importances else list(facts.space) or sorted(
        {name for t in facts.complete for name in t.params})
    front = study.best_trials if facts.pareto and facts.complete else []
    best_png = config.out_dir / "best.png"
    if best_png.is_file():
        shutil.copyfile(best_png, folder / "best.png")
    config_path = str(config.source)
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    blocks = [Heading(1, f"zsearch report: {config.name}"),
              Para(f"Drawn {when} from the study in {config.storage_url} (config {config_path}, "
                   f"model {config.model}).")]
    blocks += sections.summary(facts, config_path, _best_yaml_trial(config.out_dir), config.out_dir)
    blocks += sections.history(facts, folder, front)
    blocks += sections.importance(facts, folder, importances, error)
    blocks += sections.effects(facts, folder, order)
    blocks += sections.validation(facts, folder, config_path)
    from zsearch.study.storage import artifact_store
    blocks += terms.section(study, folder, artifact_store(config))
    blocks += sections.grid(facts, folder / "best.png" if best_png.is_file() else None, config_path)
    return blocks


def write_report(config: Config, study: Optional[optuna.Study] = None) -> Path:
    """Write results/<name>/report/ and return the path of its index.md.

    Built in a temporary folder beside it and swapped in, so a failed build leaves the previous
    report whole and a reader never sees half of one.
    """
    study = study if study is not None else open_existing_study(config)
    out = config.out_dir
    make_folder(out)
    target = out / "report"
    tmp = Path(tempfile.mkdtemp(prefix=".report.", dir=out))
    try:
        blocks = build(config, study, tmp)
        (tmp / "index.md").write_text(to_markdown(blocks), encoding="utf-8")
        (tmp / "index.html").write_text(to_html(blocks, f"zsearch report: {config.name}"), encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a report is meant to be shared
        old = None
        if target.exists():
            old = out / f".report.old.{os.getpid()}"
            os.rename(target, old)
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target / "index.md"
