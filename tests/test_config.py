"""Config validation: every mistake names its key and the fix; relative paths resolve."""

from pathlib import Path

import pytest
import yaml

from zsearch.settings.load import check_inputs, load_config
from zsearch.errors import UserError
from zsearch.study.space import SearchSpace, band_keys


def write(tmp_path: Path, data, name="c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def base_config(**overrides):
    data = {
        "name": "t",
        "loras": [{"path": "a.safetensors", "search": {"ratio": [0.0, 1.5]}},
                  {"path": "b.safetensors", "ratio": 0.7}],
        "references": "refs",
        "prompts": ["a cat", "a dog"],
    }
    data.update(overrides)
    return data


def test_paths_resolve_against_config_folder(tmp_path):
    sub = tmp_path / "configs"
    sub.mkdir()
    config = load_config(write(sub, base_config(model="../models/zi", prompts="p.txt")))
    assert config.loras[0].path == sub / "a.safetensors"
    assert config.references == sub / "refs"
    assert config.prompts == sub / "p.txt"
    assert Path(config.model) == tmp_path / "models" / "zi"  # normalised: no "configs/.."
    assert config.out_dir == Path("results/t")


def test_hub_id_is_kept(tmp_path):
    config = load_config(write(tmp_path, base_config()))
    assert config.model == "Tongyi-MAI/Z-Image-Turbo"


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(sampler="tpe"), "unknown key 'sampler'"),
    (lambda d: d["loras"][0].update(rato=1), "unknown key 'loras.0.rato'"),
    (lambda d: d.update(search={"sampler": "bayes"}), "search.sampler"),
    (lambda d: d.update(render={"width": 1000}), "render.width: 1000 is not a multiple of 16"),
    (lambda d: d.pop("references"), "'references' is required"),
    (lambda d: d.update(name="my study"), "name:"),
    (lambda d: d["loras"][0]["search"].update(ratio=[1.5, 0.5]), "low < high"),
    (lambda d: d["loras"][0]["search"].update(tie=["mlp"]), "unknown group 'mlp'"),
    (lambda d: d["loras"][0].update(ratio=2.0), "must lie inside search.ratio"),
    (lambda d: d["loras"][0]["search"].update(components=[1.2, 2.0]), "must contain 1.0"),
    (lambda d: d["loras"][0].pop("search"), "no LoRA has a 'search:' block"),
    (lambda d: d.update(prompts=[]), "prompts: the list is empty"),
    (lambda d: d.update(prompts=["a cat", "a dog", "a cat"]), "the prompt 'a cat' appears twice"),
    (lambda d: d.update(objective="pareto", search={"sampler": "cmaes"}), "cmaes cannot optimise a pareto"),
    (lambda d: d.update(seeds=[1, 2], validation={"seeds": [2, 3]}), "validation.seeds must differ"),
])
def test_config_errors_name_the_key(tmp_path, mutate, expected):
    data = base_config()
    mutate(data)
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, data))
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert message.startswith(str(tmp_path / "c.yaml"))


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="not valid YAML at line 2"):
        load_config(write(tmp_path, "name: x\nfoo: bar: baz\n"))
    with pytest.raises(UserError, match="config not found"):
        load_config(tmp_path / "nope.yaml")


def test_check_inputs_names_missing_files(tmp_path):
    config = load_config(write(tmp_path, base_config()))
    with pytest.raises(UserError, match=r"loras\[0\]\.path: .*a\.safetensors not found"):
        check_inputs(config)
    (tmp_path / "a.safetensors").write_bytes(b"x")
    (tmp_path / "b.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match="is not a folder of images"):
        check_inputs(config)
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="no .png/.jpg/.webp images"):
        check_inputs(config)
    (tmp_path / "refs" / "r.png").write_bytes(b"x")
    check_inputs(config)
    assert config.prompt_list == ["a cat", "a dog"]


def test_prompts_file_skips_comments_and_blanks(tmp_path):
    (tmp_path / "p.txt").write_text("# header\n\na cat\n  # indented comment\na dog  \n")
    config = load_config(write(tmp_path, base_config(prompts="p.txt")))
    from zsearch.settings.load import read_prompts
    assert read_prompts(config.prompts) == ["a cat", "a dog"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UserError, match="no prompts in the file"):
        read_prompts(tmp_path / "empty.txt")


def test_fingerprint_changes_with_what_changes_the_score(tmp_path):
    a = load_config(write(tmp_path, base_config()))
    b = load_config(write(tmp_path, base_config(seeds=[0, 1]), "b.yaml"))
    c = load_config(write(tmp_path, base_config(search={"trials": 9, "sampler": "random"}), "c2.yaml"))
    for cfg in (a, b, c):
        cfg.prompt_list = ["a cat"]
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == c.fingerprint()  # budget and sampler may change on a resume


def test_default_held_out_seeds_never_reuse_training_seeds(tmp_path):
    config = load_config(write(tmp_path, base_config(seeds=[0, 1000, 1001])))
    held_out = config.validation.seeds_for(config.seeds)
    noise = [s for seeds in config.noise.seed_sets(config.seeds) for s in seeds]
    assert len(held_out) == 3 and not set(held_out) & set(config.seeds)
    assert len(set(noise)) == len(noise) and not set(noise) & (set(config.seeds) | set(held_out))


def test_best_without_a_study_exits_2_and_creates_nothing(tmp_path, capsys):
    from zsearch.cli import main
    path = write(tmp_path, base_config(output=str(tmp_path / "out")))
    assert main(["best", str(path)]) == 2
    assert "no study 't' yet" in capsys.readouterr().err
    assert not (tmp_path / "out" / "study.db").exists()


def test_band_keys_cover_all_layers_once():
    for n in (1, 3, 4, 7, 30):
        keys = band_keys(n)
        assert len(keys) == n
        covered = []
        for key in keys:
            lo, _, hi = key.partition("-")
            covered += list(range(int(lo), int(hi or lo) + 1))
        assert covered == list(range(30))
    assert band_keys(3) == ["0-9", "10-19", "20-29"]


def test_space_size_baseline_and_recipe(tmp_path):
    data = base_config()
    data["loras"][0]["search"] = {"ratio": [0.0, 1.5], "components": [0.0, 2.0], "layers": "bands", "tie": ["attn"]}
    space = SearchSpace(load_config(write(tmp_path, data)))
    names = [p.name for p in space.params]
    # ratio + (attn, adaLN, w1, w2, w3) + 3 bands; the fixed LoRA adds nothing
    assert names == ["a.ratio", "a.attn", "a.adaLN", "a.w1", "a.w2", "a.w3",
                     "a.layers.0-9", "a.layers.10-19", "a.layers.20-29"]
    baseline = space.recipe(space.baseline())
    assert baseline.loras[0].ratio == 1.0 and baseline.loras[1].ratio == 0.7
    assert all(v == 1.0 for v in baseline.loras[0].components.values())
    values = dict(space.baseline(), **{"a.attn": 0.5, "a.w2": 1.5, "a.layers.10-19": 2.0, "a.ratio": 0.8})
    recipe = space.recipe(values)
    from zsearch.lora.blocks import parse_module
    lw = recipe.loras[0]
    assert lw.scale(parse_module("layers.12.attention.to_k")) == pytest.approx(0.8 * 0.5 * 2.0)
    assert lw.scale(parse_module("layers.3.feed_forward.w2")) == pytest.approx(0.8 * 1.5)
    assert recipe.loras[1].scale(parse_module("layers.12.attention.to_k")) == pytest.approx(0.7)
    # A recipe maps back onto the same parameters.
    assert space.params_of(recipe) == pytest.approx(values)
