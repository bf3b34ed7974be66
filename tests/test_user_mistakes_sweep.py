"""Mistakes and unusual-but-valid inputs found by a sweep over every command with other files
than the other tests use: each mistake is one line naming the thing and the fix, exit 2, nothing
of the user's touched; each unusual input works."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from zsearch.cli import main
from zsearch.lora.synth import make_random_lora, save_in_format

MODULES = ["layers.0.attention.to_q", "layers.3.feed_forward.w1", "layers.12.adaLN_modulation.0",
           "noise_refiner.0.attention.to_k"]


def one_line(capsys, code: int, *expected: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def lora_file(path: Path, seed: int = 0, format: str = "ai-toolkit") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_in_format(make_random_lora(32, 4, MODULES, seed=seed), path, format)


def peft_folder(folder: Path, config: dict) -> Path:
    """A PEFT save_pretrained folder: base_model.model.* keys and adapter_config.json beside them."""
    lora = make_random_lora(32, 4, MODULES, seed=3)
    folder.mkdir(parents=True)
    tensors = {}
    for name, module in lora.modules.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = module.down.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = module.up.contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def config_file(tmp_path: Path, loras: list, **overrides) -> Path:
    """A config that names files by path only: the mistakes below are refused while it is read."""
    data = {"name": "t", "model": str(tmp_path / "model"), "references": "refs", "prompts": ["a cat"],
            "seeds": [1, 2], "output": str(tmp_path / "out"),
            "loras": [{"path": p, "ratio": 1.0, "search": {"ratio": [0.0, 1.5]}} for p in loras], **overrides}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("field, value", [("r", "four"), ("lora_alpha", None), ("r", -2), ("rank_pattern", [4])])
def test_a_peft_config_with_a_value_that_is_no_number_is_one_line(tmp_path, capsys, field, value):
    config = {"r": 4, "lora_alpha": 8, "peft_type": "LORA", field: value}
    if value is None:
        config[field] = "eight"
    folder = peft_folder(tmp_path / "adapter", config)
    line = one_line(capsys, main(["inspect", str(folder)]), "adapter_config.json", "re-save the adapter")
    assert field in line


def test_merge_never_writes_over_the_weights_of_a_peft_folder_it_reads(tmp_path, capsys):
    folder = peft_folder(tmp_path / "adapter", {"r": 4, "lora_alpha": 8, "peft_type": "LORA"})
    weights = folder / "adapter_model.safetensors"
    before = weights.read_bytes()
    code = main(["merge", str(folder), "--ratio", "0.5", "-o", str(weights), "--force"])
    one_line(capsys, code, str(weights), "input", "choose another output name")
    assert weights.read_bytes() == before


def test_uppercase_safetensors_suffixes_are_read_and_written(tmp_path, capsys):
    source = lora_file(tmp_path / "Style.SAFETENSORS", format="kohya")
    out = tmp_path / "Merged.SafeTensors"
    assert main(["merge", str(source), "--ratio", "0.5", "-o", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        assert any(key.endswith("lora_A.weight") for key in f.keys())
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    assert out.name in capsys.readouterr().out


def test_windows_style_relative_paths_read_on_every_os(tmp_path, capsys, monkeypatch):
    lora_file(tmp_path / "my loras" / "stïle a.safetensors")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loras:\n  - path: .\\my loras\\stïle a.safetensors\n    ratio: 0.5\n", encoding="utf-8")
    out = tmp_path / "out.safetensors"
    assert main(["merge", "--recipe", str(recipe), "-o", str(out)]) == 0
    assert out.is_file()
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "my loras\\stïle a.safetensors"]) == 0
    from zsearch.settings.load import load_config
    config = load_config(config_file(tmp_path, ["my loras\\stïle a.safetensors"]))
    assert config.loras[0].path == tmp_path / "my loras" / "stïle a.safetensors"


@pytest.mark.skipif(sys.platform == "win32", reason="a backslash in a file name exists on macOS and Linux only")
def test_a_file_whose_name_holds_a_backslash_is_still_itself(tmp_path, capsys, monkeypatch):
    odd = lora_file(tmp_path / "odd\\name.safetensors")
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "odd\\name.safetensors"]) == 0
    assert odd.name in capsys.readouterr().out


def test_the_same_lora_twice_is_refused_by_merge_and_the_config(tmp_path, capsys):
    a = lora_file(tmp_path / "loras" / "a.safetensors")
    out = tmp_path / "o.safetensors"
    code = main(["merge", str(a), str(tmp_path / "loras" / ".." / "loras" / "a.safetensors"), "--ratio", "1",
                 "-o", str(out)])
    one_line(capsys, code, "loras[1]", "loras[0]", "list each LoRA once")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"loras": [{"path": "loras/a.safetensors", "ratio": 1},
                                                {"path": str(a), "ratio": 0.5}]}))
    one_line(capsys, main(["merge", "--recipe", str(recipe), "-o", str(out)]), str(recipe), "list each LoRA once")
    assert not out.exists()
    link = tmp_path / "loras" / "link.safetensors"
    try:
        os.symlink(a, link)
    except (OSError, NotImplementedError):  # Windows without the right to make links
        link = a
    config = config_file(tmp_path, ["loras/a.safetensors", str(link)])
    one_line(capsys, main(["run", str(config)]), str(config), "loras[1].path", "list each LoRA once")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seeds, key, expected", [
    ([3, 1, 3], "seeds", "the seed 3 appears twice"),
    ([2 ** 70], "seeds", "too large"),
    ([7, 7], "validation", "the seed 7 appears twice"),
])
def test_seeds_a_generator_cannot_take_or_repeated_are_refused(tmp_path, capsys, seeds, key, expected):
    a = lora_file(tmp_path / "a.safetensors")
    extra = {"validation": {"seeds": seeds}} if key == "validation" else {"seeds": seeds}
    config = config_file(tmp_path, [str(a)], **extra)
    one_line(capsys, main(["run", str(config)]), f"{key}", expected)
    assert not (tmp_path / "out").exists()


def test_files_that_are_not_utf8_text_say_so(tmp_path, capsys):
    a = lora_file(tmp_path / "a.safetensors")
    one_line(capsys, main(["run", str(a)]), str(a), "not a UTF-8 text file", ".yaml")
    from PIL import Image
    (tmp_path / "refs").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "refs" / "r.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    config = config_file(tmp_path, [str(a)], prompts="prompts.txt")
    one_line(capsys, main(["run", str(config)]), str(prompts), "not UTF-8 text; save it as UTF-8")
    assert not (tmp_path / "out").exists()


def test_references_in_subfolders_are_read_and_hidden_companions_skipped(tmp_path):
    from PIL import Image
    from zsearch.settings.load import check_inputs, load_config
    from zsearch.util.images import read_rgb, reference_files
    refs = tmp_path / "refs"
    kept = [refs / "artist one" / "A.PNG", refs / "artist two" / "b.JPEG", refs / "artist two" / "c.webp"]
    for i, path in enumerate(kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + i, 48), (i * 60, 10, 10)).save(path, {".PNG": "PNG", ".JPEG": "JPEG"}.get(
            path.suffix, "WEBP"))
    (refs / "artist one" / "._A.PNG").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS companion
    (refs / ".thumbnails").mkdir()
    Image.new("RGB", (40, 40)).save(refs / ".thumbnails" / "c.png")
    (refs / "notes.txt").write_text("not an image")
    assert reference_files(refs) == sorted(kept)
    config = load_config(config_file(tmp_path, [str(lora_file(tmp_path / "a.safetensors"))]))
    check_inputs(config)
    before = config.fingerprint()["references"]
    Image.new("RGB", (40, 40), (1, 2, 3)).save(refs / "artist two" / "d.png")
    assert len(config.fingerprint()["references"]) == len(before) + 1  # a new reference is a new study
    assert [read_rgb(path).shape for path in kept] == [(48, 40, 3), (48, 41, 3), (48, 42, 3)]
    Image.new("RGB", (40, 40)).save(refs / "top.png")  # images at the top: the subfolders are set aside
    assert reference_files(refs) == [refs / "top.png"]


@pytest.mark.parametrize("overrides, key", [
    ({"objective": {"style": float("inf")}}, "objective.style"),
    ({"search": {"hours": float("nan")}}, "search.hours"),
    ({"render": {"guidance": float("-inf")}}, "render.guidance"),
])
def test_an_infinite_or_nan_number_in_the_config_is_refused(tmp_path, capsys, overrides, key):
    config = config_file(tmp_path, [str(lora_file(tmp_path / "a.safetensors"))], **overrides)
    one_line(capsys, main(["run", str(config)]), str(config), key, "finite number")
    assert not (tmp_path / "out").exists()


def test_a_lora_that_is_the_runs_own_best_output_is_refused_before_any_study(tmp_path, capsys):
    from PIL import Image
    (tmp_path / "refs").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "refs" / "r.png")
    best = lora_file(tmp_path / "out" / "best.safetensors", seed=5)
    before = best.read_bytes()
    config = config_file(tmp_path, [str(lora_file(tmp_path / "a.safetensors")), "out/best.safetensors"])
    one_line(capsys, main(["run", str(config)]), "loras[1].path", "own output", "copy it elsewhere")
    assert best.read_bytes() == before and sorted(p.name for p in best.parent.iterdir()) == ["best.safetensors"]


def test_a_prompts_file_with_a_byte_order_mark_reads_its_first_prompt_plainly(tmp_path, capsys):
    from zsearch.settings.load import read_prompts
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("a cat on a mat\r\n# a comment\r\n\r\nune forêt\r\n".encode("utf-8-sig"))
    assert read_prompts(prompts) == ["a cat on a mat", "une forêt"]
    from zsearch.errors import UserError
    with pytest.raises(UserError, match="is a folder; point 'prompts:' at a text file"):
        read_prompts(tmp_path)


@pytest.mark.parametrize("overrides, expected", [
    ({"prompts": 5}, "prompts: must be a prompts file (one prompt a line) or a list of prompts (got 5)"),
    ({"render": {"compile": "yes please"}}, "render.compile: must be auto, true or false (got 'yes please')"),
])
def test_a_key_of_two_kinds_names_both_and_not_pydantics_internals(tmp_path, capsys, overrides, expected):
    config = config_file(tmp_path, [str(lora_file(tmp_path / "a.safetensors"))], **overrides)
    line = one_line(capsys, main(["run", str(config)]), f"{config}: {expected}")
    assert "[" not in line.split(": ", 2)[2].split(" (got")[0]  # no 'lax-or-strict[...]' member names


def test_validate_with_top_k_0_is_refused_rather_than_crowning_the_baseline(tmp_path, capsys):
    """top_k 0 would validate the baseline alone, and best.* would follow it."""
    import optuna
    from PIL import Image
    (tmp_path / "refs").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "refs" / "r.png")
    config = config_file(tmp_path, [str(lora_file(tmp_path / "a.safetensors"))], validation={"top_k": 0})
    (tmp_path / "out").mkdir()
    optuna.create_study(study_name="t", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    one_line(capsys, main(["validate", str(config)]), str(config), "validation.top_k is 0", "top_k: 5")
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    assert study.user_attrs == {} and study.trials == []  # no validation record, nothing run
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("study.db")) == []


def test_a_recipe_of_other_loras_is_refused_by_render_and_start(tmp_path, capsys):
    """Its weights would silently apply to the config's LoRAs, which sit at the same places."""
    from zsearch.lora.recipe import load_recipe
    from zsearch.settings.load import load_config
    from zsearch.study.opening import check_recipe_fits
    a, b = lora_file(tmp_path / "a.safetensors", seed=1), lora_file(tmp_path / "b.safetensors", seed=2)
    config = config_file(tmp_path, [str(a)])
    recipe = tmp_path / "other.yaml"
    recipe.write_text(yaml.safe_dump({"loras": [{"path": "b.safetensors", "ratio": 0.7}]}))
    one_line(capsys, main(["render", str(config), "--recipe", str(recipe), "-o", str(tmp_path / "r")]),
             str(recipe), "loras[0]", str(b), "another LoRA than the config's")
    assert not (tmp_path / "r").exists()
    from zsearch.errors import UserError
    with pytest.raises(UserError, match="another LoRA than the config's"):  # as a run checks `start:` recipes
        check_recipe_fits(recipe, load_recipe(recipe), load_config(config))
    moved = tmp_path / "elsewhere" / "a copy.safetensors"
    moved.parent.mkdir()
    shutil.copy(a, moved)
    for path in (moved, tmp_path / "not on this machine.safetensors"):  # same content; or only a name
        recipe.write_text(yaml.safe_dump({"loras": [{"path": str(path), "ratio": 0.7}]}))
        check_recipe_fits(recipe, load_recipe(recipe), load_config(config))


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu0"])
def test_a_device_torch_does_not_know_is_refused_while_the_config_is_read(tmp_path, capsys, device):
    config = config_file(tmp_path, [str(lora_file(tmp_path / "a.safetensors"))], device=device)
    one_line(capsys, main(["run", str(config)]), f"{config}: device:", "use auto, cpu, cuda or cuda:N", repr(device))
    assert not (tmp_path / "out").exists()
