"""A PEFT adapter given as its weights file reads exactly as its folder: the adapter_config.json
beside it holds the scale (issue 22). Without any config, PEFT keys are refused by every reader:
inspect, merge and the search."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from zsearch.cli import main
from zsearch.errors import UserError
from zsearch.lora.read import load_lora

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["to_q", "to_v", "w2", "layers.1.adaLN_modulation.0", "cap_embedder.1"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A real PEFT save_pretrained folder (r 4, lora_alpha 8) on the demo's tiny transformer, and
    PEFT's own scaling x B A for every module it adapts."""
    peft = pytest.importorskip("peft")
    from diffusers import ZImageTransformer2DModel
    from zsearch.demo.spec import TRANSFORMER_CONFIG
    torch.manual_seed(0)
    model = ZImageTransformer2DModel(**TRANSFORMER_CONFIG)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_()
    folder = tmp_path_factory.mktemp("peft") / "adapter"
    wrapped.save_pretrained(str(folder))
    expected = {name.removeprefix("base_model.model."):
                m.scaling["default"] * (m.lora_B["default"].weight.double() @ m.lora_A["default"].weight.double())
                for name, m in wrapped.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    return folder, expected


def _raw_delta(weights: Path, module: str) -> torch.Tensor:
    """B A straight from the file's tensors, no zsearch code involved."""
    with safe_open(str(weights), "pt") as f:
        a = f.get_tensor(f"base_model.model.{module}.lora_A.weight").double()
        b = f.get_tensor(f"base_model.model.{module}.lora_B.weight").double()
    return b @ a


def _lone_file(adapter, tmp_path) -> Path:
    """The weights file copied alone into a folder: no adapter_config.json anywhere."""
    folder, _ = adapter
    lone = tmp_path / "loras" / "adapter_model.safetensors"
    lone.parent.mkdir()
    shutil.copy(folder / "adapter_model.safetensors", lone)
    return lone


def test_file_and_folder_give_the_same_delta_twice_b_a(adapter):
    folder, expected = adapter
    weights = folder / "adapter_model.safetensors"
    as_folder, as_file = load_lora(folder), load_lora(weights)
    assert set(as_folder.modules) == set(as_file.modules) == set(expected) and len(expected) > 60
    for path, want in expected.items():
        got_file = as_file.modules[path].delta(torch.float64)
        assert torch.equal(got_file, as_folder.modules[path].delta(torch.float64)), path
        independent = 2.0 * _raw_delta(weights, path)  # lora_alpha 8 / r 4
        assert torch.allclose(got_file, independent, rtol=1e-6, atol=1e-9), path
        assert torch.allclose(independent, want, rtol=1e-6, atol=1e-9), path  # PEFT's own scaling agrees
    assert as_file.format == as_folder.format == "peft"


def test_inspect_names_the_config_it_read(adapter, capsys):
    folder, _ = adapter
    weights = folder / "adapter_model.safetensors"
    assert main(["inspect", str(weights)]) == 0
    out = capsys.readouterr().out
    scale_line = next(line for line in out.splitlines() if line.strip().startswith("scale"))
    assert str(folder / "adapter_config.json") in scale_line and "lora_alpha 8" in scale_line and "r 4" in scale_line
    assert "4 at rank 4" not in out and "8 at rank 4 (scale 2)" in out
    assert main(["inspect", "--json", str(weights)]) == 0
    info = json.loads(capsys.readouterr().out)
    info = info["files"][0]
    assert info["scale_source"].startswith(str(folder / "adapter_config.json"))


def test_no_alpha_file_says_scale_one(tmp_path, capsys):
    from zsearch.lora.synth import make_random_lora, save_in_format
    path = save_in_format(make_random_lora(32, 2, ["layers.0.attention.to_q"]), tmp_path / "a.safetensors",
                          "ai-toolkit")
    assert main(["inspect", str(path)]) == 0
    assert "scale   from no alpha saved in the file (scale 1" in capsys.readouterr().out


def _refused_one_line(capsys, code: int, missing: Path) -> str:
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{missing}: missing" in err
    return err


def test_missing_config_is_refused_by_inspect_and_merge(adapter, tmp_path, capsys):
    lone = _lone_file(adapter, tmp_path)
    missing = lone.parent / "adapter_config.json"
    with pytest.raises(UserError, match="adapter_config.json: missing"):
        load_lora(lone)
    _refused_one_line(capsys, main(["inspect", str(lone)]), missing)
    out = tmp_path / "merged.safetensors"
    _refused_one_line(capsys, main(["merge", str(lone), "--ratio", "1", "-o", str(out)]), missing)
    assert not out.exists()
    folder_without = tmp_path / "folder-without-config"  # a PEFT folder that lost its config: the same
    folder_without.mkdir()
    shutil.copy(lone, folder_without / "adapter_model.safetensors")
    _refused_one_line(capsys, main(["inspect", str(folder_without)]), folder_without / "adapter_config.json")


def test_a_config_of_another_rank_is_refused(adapter, tmp_path):
    lone = _lone_file(adapter, tmp_path)
    (lone.parent / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 8}))
    with pytest.raises(UserError, match="has rank 4 but .*adapter_config.json says r 8"):
        load_lora(lone)


def test_unreadable_metadata_config_is_refused(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "d.safetensors"
    save_file({"transformer.layers.0.attention.to_q.lora_A.weight": torch.randn(2, 32),
               "transformer.layers.0.attention.to_q.lora_B.weight": torch.randn(32, 2)}, str(path),
              metadata={"lora_adapter_metadata": "{not json"})
    with pytest.raises(UserError, match="lora_adapter_metadata.*scale .*unknown"):
        load_lora(path)


def _config(demo_assets, tmp_path, lora: Path) -> Path:
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    root = demo_assets.root
    data.pop("demo")
    data.update(model=str(demo_assets.model_dir), references=str(demo_assets.references), prompts=str(demo_assets.prompts),
                output=str(tmp_path / "results"), cache=str(tmp_path / "cache"),
                scorer={"model": f"local-dir:{demo_assets.clip_dir}", "pretrained": None, "style": "centroid"},
                judges=[{"name": "aesthetic", "checkpoint": str(root / "aesthetic-head.safetensors"), "weight": 0.05}])
    data["loras"] = [{"path": str(lora), "ratio": 1.0, "search": {"ratio": [0.0, 1.5]}}]
    path = tmp_path / "peft.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_search_refuses_before_any_study(adapter, demo_assets, tmp_path):
    lone = _lone_file(adapter, tmp_path)
    config = _config(demo_assets, tmp_path, lone)
    done = subprocess.run([sys.executable, "-m", "zsearch.cli", "run", str(config), "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert f"{lone.parent / 'adapter_config.json'}: missing" in done.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("study.db"))


def test_the_search_reads_the_file_as_inspect_and_merge_do(adapter, demo_assets, tmp_path):
    """The search's engine gets its LoRAs from the same reader: file and folder patch the model alike,
    by 2 B A."""
    from zsearch.settings.load import load_config
    from zsearch.search.session import load_engine
    folder, _ = adapter
    weights = folder / "adapter_model.safetensors"
    deltas = []
    for source in (weights, folder):
        config = load_config(_config(demo_assets, tmp_path, source))
        config.render.way = "fused"
        engine = load_engine(config)
        layer = engine.pipe.transformer.layers[3].attention.to_q
        base = layer.weight.detach().double().clone()
        engine.set_scales([{path: 1.0 for path in engine.weighting.loras[0].modules}])
        deltas.append(layer.weight.detach().double() - base)
    want = 2.0 * _raw_delta(weights, "layers.3.attention.to_q")
    assert torch.equal(deltas[0], deltas[1])
    assert torch.allclose(deltas[0], want.to(deltas[0].dtype), rtol=1e-4, atol=1e-6)


def test_a_study_and_its_outputs_know_the_config_that_holds_the_scale(adapter, demo_assets, tmp_path):
    """The adapter_config.json is part of the LoRA: a study given the folder or the weights file
    fingerprints it (editing lora_alpha changes what the scores mean), and so does an output's
    source hash. A LoRA without such a config is its one file, as before."""
    import hashlib
    from zsearch.lora.read import lora_files
    from zsearch.lora.write import file_sha256
    from zsearch.settings.fingerprint import fingerprint
    from zsearch.settings.load import load_config
    folder = tmp_path / "adapter"
    shutil.copytree(adapter[0], folder)
    weights, settings = folder / "adapter_model.safetensors", folder / "adapter_config.json"
    assert lora_files(folder) == lora_files(weights) == [weights, settings]
    kohya = next(demo_assets.root.rglob("*.safetensors"))
    assert lora_files(kohya) == [kohya]

    def identities(source: Path) -> tuple[str, str]:
        config = load_config(_config(demo_assets, tmp_path, source))
        return fingerprint(config)["loras"][0]["sha256"], file_sha256(source)

    before = {source: identities(source) for source in (folder, weights)}
    want = hashlib.sha256(weights.read_bytes() + settings.read_bytes()).hexdigest()
    assert before[folder][1] == before[weights][1] == want
    data = json.loads(settings.read_text())
    data["lora_alpha"] = 16
    settings.write_text(json.dumps(data))
    for source in (folder, weights):
        after = identities(source)
        assert after[0] != before[source][0] and after[1] != before[source][1], source


def test_a_search_runs_on_a_peft_folder(adapter, demo_assets, tmp_path):
    """The folder PEFT's save_pretrained writes is a LoRA path like a file: the run ends with a
    merged best whose recorded source hash covers the weights and their config."""
    import hashlib
    path = _config(demo_assets, tmp_path, adapter[0])
    data = yaml.safe_load(path.read_text())
    data.update(seeds=[1], search={"trials": 2, "seed": 0}, noise={"repeats": 0}, validation={"top_k": 0})
    path.write_text(yaml.safe_dump(data))
    done = subprocess.run([sys.executable, "-m", "zsearch.cli", "run", str(path), "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    best = next((tmp_path / "results").rglob("best.safetensors"))
    with safe_open(str(best), "pt") as f:
        sources = json.loads(f.metadata()["zsearch.sources"])
    folder = adapter[0]
    want = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()
                          + (folder / "adapter_config.json").read_bytes()).hexdigest()
    assert [s["sha256"] for s in sources] == [want]
