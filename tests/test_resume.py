"""A study is tied to what it measured: resume by content, refuse changed inputs, untouched outputs,
and a study whose first run failed while setting up does not block the fixed command."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from PIL import Image

from search_helpers import demo_config, zsearch

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_refusal(result, *expected):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def _finished(out: Path) -> int:
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    return len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))


@pytest.fixture
def project(tmp_path, demo_assets):
    """A finished 2-trial study over copies of the demo LoRAs and references."""
    loras = [tmp_path / f"lora{i}.safetensors" for i in range(2)]
    for src, dst in zip(demo_assets.loras, loras):
        shutil.copy(src, dst)
    refs = tmp_path / "refs"
    shutil.copytree(demo_assets.references, refs)
    config = demo_config(tmp_path, demo_assets, search={"trials": 2}, references=str(refs))
    data = yaml.safe_load(config.read_text())
    for entry, path in zip(data["loras"], loras):
        entry["path"] = str(path)
    config.write_text(yaml.safe_dump(data))
    result = zsearch("run", config, "--no-progress")
    assert result.returncode == 0, result.stderr
    return config, loras, refs, tmp_path / "out" / "t"


def test_swapped_lora_contents_are_refused_and_nothing_is_touched(project):
    config, loras, _, out = project
    before = _snapshot(out)
    a, b = loras[0].read_bytes(), loras[1].read_bytes()
    loras[0].write_bytes(b)
    loras[1].write_bytes(a)
    for command in ("run", "best", "validate"):
        _one_line_refusal(zsearch(command, config, *(["--no-progress"] if command == "run" else [])),
                          "loras[0] content", "loras[1] content", "name:")
    assert _snapshot(out) == before  # study.db, best.*, artifacts: every byte and mtime as it was


def test_changed_reference_image_is_refused(project):
    config, _, refs, out = project
    before = _snapshot(out)
    image = sorted(refs.glob("*.png"))[0]
    Image.new("RGB", Image.open(image).size, "red").save(image)
    _one_line_refusal(zsearch("run", config, "--no-progress", "--trials", "3"), "reference images")
    assert _snapshot(out) == before


def test_moved_and_renamed_inputs_with_the_same_content_resume(project):
    config, loras, refs, out = project
    moved = config.parent / "elsewhere"
    moved.mkdir()
    data = yaml.safe_load(config.read_text())
    for i, (entry, path) in enumerate(zip(data["loras"], loras)):
        entry["path"] = str(shutil.move(path, moved / f"renamed{i}.safetensors"))
    data["references"] = str(shutil.move(refs, moved / "other-refs"))
    config.write_text(yaml.safe_dump(data))
    result = zsearch("run", config, "--no-progress", "--trials", "3")
    assert result.returncode == 0, result.stderr
    assert _finished(out) == 3  # resumed: the two earlier trials and one more


def test_a_study_whose_set_up_failed_does_not_block_the_fixed_rerun(tmp_path, demo_assets):
    typo = demo_config(tmp_path, demo_assets, model="Tongyi-MAI/Z-Image-Turbbo", search={"trials": 2})
    failed = zsearch("run", typo, "--no-progress")
    _one_line_refusal(failed, "Z-Image-Turbbo")
    fixed = demo_config(tmp_path, demo_assets, search={"trials": 2})  # same name, the right model
    result = zsearch("run", fixed, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert _finished(tmp_path / "out" / "t") == 2


def test_a_study_another_worker_is_still_setting_up_is_never_deleted(tmp_path, demo_assets):
    """Two workers with the same name but other inputs: while the first has set the study up and is
    still loading its model (nothing measured, nothing failed), the second is refused and the
    study stays; once the first run has failed, the second may replace it."""
    from zsearch.settings.load import load_config
    from zsearch.search.session import Session
    from zsearch.study.opening import mark_setup_failed

    first = Session(load_config(demo_config(tmp_path, demo_assets, search={"trials": 2})))
    study = first.study  # set up, then (as far as anyone can tell) loading the model
    other = demo_config(tmp_path, demo_assets, seeds=[7, 8], search={"trials": 2})
    _one_line_refusal(zsearch("run", other, "--no-progress"), "measured other inputs", "seeds")
    kept = optuna.load_study(study_name="t", storage=first.config.storage_url)
    assert kept._study_id == study._study_id and kept.user_attrs["fingerprint"] == study.user_attrs["fingerprint"]
    mark_setup_failed(study)  # what the first run does when it fails
    result = zsearch("run", other, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert _finished(tmp_path / "out" / "t") == 2


@pytest.mark.parametrize("where", ["references", "identity"])
def test_a_tiny_reference_image_is_refused_before_any_study_exists(tmp_path, demo_assets, where):
    refs = tmp_path / "refs"
    shutil.copytree(demo_assets.references, refs)
    Image.new("RGB", (1, 1), "white").save(refs / "dot.png")
    extra = {"references": str(refs)} if where == "references" else \
        {"identity": {"references": str(refs), "model": str(demo_assets.root / "no-dino")}}
    config = demo_config(tmp_path, demo_assets, **extra)
    _one_line_refusal(zsearch("run", config, "--no-progress"), "dot.png", "1x1", "too small")
    assert not (tmp_path / "out").exists()  # nothing written


def test_an_unreadable_reference_image_is_refused_before_any_study_exists(tmp_path, demo_assets):
    refs = tmp_path / "refs"
    shutil.copytree(demo_assets.references, refs)
    (refs / "broken.png").write_bytes(b"not a png at all")
    config = demo_config(tmp_path, demo_assets, references=str(refs))
    _one_line_refusal(zsearch("run", config, "--no-progress"), "broken.png", "cannot be read")
    assert not (tmp_path / "out").exists()
