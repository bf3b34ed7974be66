"""Every output path where no file can be created ends in one line and exit 2 (issue 22): a special
file system, a path through a file, a name too long, a read-only folder, a folder that vanished;
for merge -o, render -o, the config's output: and cache:, and the report and review folders.
Nothing of the user's is overwritten."""

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from zsearch.cli import main
from zsearch.errors import UserError
from zsearch.lora.synth import make_random_lora, save_in_format
from zsearch.util.atomic import atomic_path, check_can_create

REPO = Path(__file__).resolve().parents[1]
LONG = "n" * 300
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes into read-only folders


def _bad_paths(tmp_path: Path, name: str) -> dict[str, Path]:
    """One path per class of place where no file can be created (a stand-in file is made)."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("the user's notes")
    paths = {"through a file": blocker / "sub" / name, "name too long": tmp_path / f"{LONG}{name}",
             "folder with a name too long": tmp_path / LONG / name}
    if Path("/proc/self").is_dir():
        paths["special file system"] = Path("/proc") / name
    if not ROOT and os.name != "nt":
        locked = tmp_path / "locked"
        locked.mkdir(exist_ok=True)
        locked.chmod(0o555)
        paths["read-only folder"] = locked / "sub" / name
    return paths


def _one_line(capsys, code: int, path: Path) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert str(path)[:200] in lines[0] or str(path.parent)[:200] in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def lora(tmp_path):
    return save_in_format(make_random_lora(32, 2, ["layers.0.attention.to_q"], seed=1), tmp_path / "in.safetensors",
                          "ai-toolkit")


def test_merge_output_where_no_file_can_be_created(tmp_path, lora, capsys):
    for kind, out in _bad_paths(tmp_path, "x.safetensors").items():
        line = _one_line(capsys, main(["merge", str(lora), "--ratio", "1", "-o", str(out)]), out)
        assert "choose another path" in line, (kind, line)
    assert (tmp_path / "notes.txt").read_text() == "the user's notes"


def test_merge_in_a_working_folder_that_vanished(tmp_path, lora):
    """Run as a child: torch must not be loaded before the check (its libraries fail to load there)."""
    gone = tmp_path / "gone"
    gone.mkdir()
    code = ("import os, sys\nos.chdir(sys.argv[1]); os.rmdir(sys.argv[1])\nfrom zsearch.cli import main\n"
            "sys.exit(main(['merge', sys.argv[2], '--ratio', '1', '-o', 'out.safetensors']))\n")
    done = subprocess.run([sys.executable, "-c", code, str(gone), str(lora)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "current folder no longer exists" in done.stderr


def test_atomic_write_into_a_folder_that_vanishes_midway(tmp_path):
    target = tmp_path / "out" / "best.yaml"
    with pytest.raises(UserError, match=r"best\.yaml: no file can be created there"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            for leftover in target.parent.iterdir():
                leftover.unlink()
            target.parent.rmdir()
    assert not target.exists()


def test_probe_leaves_nothing_behind(tmp_path):
    check_can_create(tmp_path / "a" / "b" / "c.safetensors")
    check_can_create(tmp_path / "d.safetensors")
    check_can_create(tmp_path / "e", folder=True)
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "kept.safetensors"
    existing.write_bytes(b"users")
    check_can_create(existing)
    assert existing.read_bytes() == b"users" and list(tmp_path.iterdir()) == [existing]


def _config(demo_assets, tmp_path: Path, **paths) -> Path:
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data.pop("demo")
    data.update(model=str(demo_assets.model_dir), references=str(demo_assets.references),
                prompts=str(demo_assets.prompts), output=str(tmp_path / "results"), cache=str(tmp_path / "cache"),
                scorer={"model": f"local-dir:{demo_assets.clip_dir}", "pretrained": None, "style": "centroid"},
                judges=[])
    for lora, path in zip(data["loras"], demo_assets.loras):
        lora["path"] = str(path)
    data.update({k: str(v) for k, v in paths.items()})
    path = tmp_path / f"c{len(list(tmp_path.glob('c*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_output_and_cache_and_render_out(demo_assets, tmp_path, capsys):
    for kind, bad in _bad_paths(tmp_path, "results").items():
        for key in ("output", "cache"):
            config = _config(demo_assets, tmp_path, **{key: bad})
            line = _one_line(capsys, main(["run", str(config), "--no-progress"]), bad)
            assert f"{key}:" in line, (kind, line)
        config = _config(demo_assets, tmp_path)
        _one_line(capsys, main(["render", str(config), "-o", str(bad)]), bad)
    assert not (tmp_path / "results").exists()  # refused before any study
    assert (tmp_path / "notes.txt").read_text() == "the user's notes"


def test_report_and_review_folders_that_are_files(demo_assets, tmp_path, capsys):
    config = _config(demo_assets, tmp_path)
    out = tmp_path / "results"
    out.mkdir()
    name = yaml.safe_load(config.read_text())["name"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    for command, folder in (("report", "report"), ("review", "review")):
        blocker = out / folder
        blocker.write_text("the user's file")
        line = _one_line(capsys, main([command, str(config)]), blocker)
        assert "a file stands where a folder is needed" in line
        assert blocker.read_text() == "the user's file"


def test_a_folder_another_worker_makes_meanwhile_is_no_error(tmp_path, monkeypatch):
    """Two workers starting together on a new output folder: the one that finds it made between
    its look and its try writes into it, instead of calling it a file in the way."""
    from zsearch.util import atomic

    target = tmp_path / "new" / "out"
    real_mkdir = atomic.os.mkdir

    def raced(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)  # the other worker, first
        return real_mkdir(path, *args, **kwargs)
    monkeypatch.setattr(atomic.os, "mkdir", raced)
    atomic.check_can_create(target, "output", folder=True)
    monkeypatch.undo()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="a file stands where a folder is needed"):
        atomic.check_can_create(tmp_path / "file" / "out", "output", folder=True)


def test_a_probe_folder_another_worker_removes_meanwhile_is_no_file(tmp_path, monkeypatch):
    """Worker B's probe made `new/` just as A looked (A saw it exist), and B removed it before A
    tried: A looks again instead of calling the vanished folder a file in the way."""
    from zsearch.util import atomic

    target = tmp_path / "new" / "out"
    real = atomic._deepest_existing
    looks = []

    def raced(folder):
        looks.append(folder)
        if len(looks) == 1:
            return tmp_path / "new", ["out"]  # seen a moment ago, gone now
        return real(folder)
    monkeypatch.setattr(atomic, "_deepest_existing", raced)
    atomic.check_can_create(target, "output", folder=True)
    assert len(looks) == 2 and not (tmp_path / "new").exists()
