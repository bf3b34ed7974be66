"""`zsearch merge` and `zsearch inspect` through the CLI: results, exit codes and messages."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from zsearch.lora.blocks import all_modules
from zsearch.cli import main
from zsearch.lora.synth import make_random_lora, save_in_format

DIM = 32
ALL = [m.path for m in all_modules()]


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors gain nothing from threads


def run(capsys, *argv):
    """(exit code, stdout, stderr) of `zsearch argv...` run in-process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def read_state(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def delta(state, path):
    return state[f"diffusion_model.{path}.lora_B.weight"].double() @ state[f"diffusion_model.{path}.lora_A.weight"].double()


def source_delta(lora, path):
    m = lora.modules[path]
    return m.scale * (m.up.double() @ m.down.double())


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def two(tmp_path):
    a = make_random_lora(DIM, 4, ALL, seed=1, alpha=2.0)
    b = make_random_lora(DIM, 6, ALL, seed=2)
    return a, b, save_in_format(a, tmp_path / "a.safetensors", "kohya"), \
        save_in_format(b, tmp_path / "b.safetensors", "ai-toolkit")


def test_merge_with_flags_matches_hand_computation(tmp_path, capsys, two):
    a, b, pa, pb = two
    out = tmp_path / "out.safetensors"
    code, stdout, err = run(capsys, "merge", pa, pb, "--ratio", 0.8, "--ratio", 0.5, "--attn", 0.7, "--to_k", 2,
                            "--w1", 1.2, "--layers", "0-9=0.5, 20-29=1.5,noise_refiner=0", "-o", out)
    assert (code, err) == (0, "") and f"wrote {out}" in stdout and "exact" in stdout
    state, meta = read_state(out)
    # scale = ratio x component x layer, written out by hand for a few modules
    cases = {
        "layers.3.attention.to_q": (0.8 * 0.7 * 0.5, 0.5 * 0.7 * 0.5),
        "layers.3.attention.to_k": (0.8 * 2 * 0.5, 0.5 * 2 * 0.5),
        "layers.12.feed_forward.w1": (0.8 * 1.2, 0.5 * 1.2),
        "layers.25.feed_forward.w2": (0.8 * 1.5, 0.5 * 1.5),
        "layers.25.adaLN_modulation.0": (0.8 * 1.5, 0.5 * 1.5),
        "context_refiner.1.attention.to_out.0": (0.8 * 0.7, 0.5 * 0.7),
    }
    for path, (sa, sb) in cases.items():
        assert rel(delta(state, path), sa * source_delta(a, path) + sb * source_delta(b, path)) < 1e-5, path
    assert not any(k.startswith("diffusion_model.noise_refiner.") for k in state)  # weight 0: dropped
    recipe = yaml.safe_load(meta["zsearch.lora.recipe"])
    assert [lw["ratio"] for lw in recipe["loras"]] == [0.8, 0.5]
    assert recipe["loras"][0]["components"] == {"to_k": 2.0, "w1": 1.2, "attn": 0.7}
    assert recipe["loras"][1]["layers"] == {"0-9": 0.5, "20-29": 1.5, "noise_refiner": 0.0}
    assert json.loads(meta["zsearch.merge"]) == {"rank": None, "dtype": "float32"}


def test_recipe_gives_the_same_file_as_the_flags(tmp_path, capsys, two):
    _, _, pa, pb = two
    flags = tmp_path / "flags.safetensors"
    assert run(capsys, "merge", pa, pb, "--ratio", 0.6, "--ffn", 0.3, "--layers", "5-9=2", "-o", flags)[0] == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"loras": [
        {"path": "a.safetensors", "ratio": 0.6, "components": {"ffn": 0.3}, "layers": {"5-9": 2}},
        {"path": "b.safetensors", "ratio": 0.6, "components": {"ffn": 0.3}, "layers": {"5-9": 2}}]}))
    from_recipe = tmp_path / "recipe.safetensors"
    assert run(capsys, "merge", "--recipe", recipe, "-o", from_recipe)[0] == 0
    s1, _ = read_state(flags)
    s2, _ = read_state(from_recipe)
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_rank_flag_reports_its_error_and_dtype(tmp_path, capsys, two):
    a, b, pa, pb = two
    out = tmp_path / "r.safetensors"
    code, stdout, _ = run(capsys, "merge", pa, pb, "--ratio", 1, "--rank", 4, "--dtype", "fp16", "-o", out)
    assert code == 0
    state, meta = read_state(out)
    assert {t.dtype for t in state.values()} == {torch.float16}
    assert {t.shape[0] for k, t in state.items() if k.endswith("lora_A.weight")} == {4}
    sq_err = sq_norm = 0.0
    for path in ALL:
        exact = source_delta(a, path) + source_delta(b, path)
        sq_err += (delta(state, path) - exact).norm().item() ** 2
        sq_norm += exact.norm().item() ** 2
    reported = json.loads(meta["zsearch.merge"])["relative_error"]
    assert reported == pytest.approx((sq_err / sq_norm) ** 0.5, rel=2e-3)  # fp16 output rounding
    assert f"relative error {reported:.3g}" in stdout


def test_one_ratio_for_all_and_format_conversion(tmp_path, capsys, two):
    a, _, pa, _ = two
    out = tmp_path / "converted.safetensors"
    assert run(capsys, "merge", pa, "--ratio", 1, "-o", out)[0] == 0
    state, _ = read_state(out)
    assert all(rel(delta(state, p), source_delta(a, p)) < 1e-6 for p in ALL)


def test_force_replaces_an_existing_output(tmp_path, capsys, two):
    _, _, pa, _ = two
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"mine")
    code, _, err = run(capsys, "merge", pa, "--ratio", 1, "-o", out)
    assert code == 2 and "--force" in err and out.read_bytes() == b"mine"
    assert run(capsys, "merge", pa, "--ratio", 1, "-o", out, "--force")[0] == 0
    assert read_state(out)[0]


def test_inspect_text_and_json_norms(tmp_path, capsys, two):
    a, b, pa, pb = two
    code, stdout, _ = run(capsys, "inspect", pa, pb)
    assert code == 0
    assert "format  kohya" in stdout and "format  ai-toolkit" in stdout
    assert "alpha   2 at rank 4 (scale 0.5)" in stdout and "alpha   6 at rank 6 (scale 1)" in stdout
    assert "ComfyUI drops kohya-named attention keys" in stdout
    code, stdout, _ = run(capsys, "inspect", "--json", pa)
    info = json.loads(stdout)["files"][0]
    assert (info["format"], info["dim"], info["modules"], info["ranks"]) == ("kohya", DIM, len(ALL), {"4": len(ALL)})
    assert info["coverage"]["adaLN"] == {"noise_refiner": [0, 1], "layers": list(range(30))}
    expected = sum(source_delta(a, p).norm().item() ** 2 for p in ALL
                   if ".attention.to_v" in p and p.startswith("layers.") and 10 <= int(p.split(".")[1]) <= 19) ** 0.5
    assert info["norms"]["to_v"]["10-19"] == pytest.approx(expected, rel=1e-5)
    assert info["total_norm"] == pytest.approx(sum(source_delta(a, p).norm().item() ** 2 for p in ALL) ** 0.5,
                                               rel=1e-5)


def test_inspect_shows_partial_coverage(tmp_path, capsys):
    paths = ["layers.11.attention.to_q", "layers.12.attention.to_q"]
    path = save_in_format(make_random_lora(DIM, 2, paths), tmp_path / "p.safetensors", "diffsynth")
    code, stdout, _ = run(capsys, "inspect", path)
    row = next(line for line in stdout.splitlines() if line.strip().startswith("to_q"))
    assert "(2/10)" in row and row.rstrip().endswith("11-12")


# ---- every rejection: exit 2, one line on stderr, nothing written ---------------------------

def bad_files(tmp_path):
    files = {}
    files["corrupt"] = tmp_path / "corrupt.safetensors"
    files["corrupt"].write_bytes(b"\x00" * 64)
    files["lokr"] = tmp_path / "lokr.safetensors"  # a DoRA LoKr: refused, named DoRA
    save_file({"lycoris_layers_0_attention_to_q.lokr_w1": torch.randn(2, 2),
               "lycoris_layers_0_attention_to_q.dora_scale": torch.randn(1, 8)}, str(files["lokr"]))
    files["sdxl"] = tmp_path / "sdxl.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(2, 8)}, str(files["sdxl"]))
    files["nan"] = tmp_path / "nan.safetensors"
    save_file({"diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.full((2, DIM), float("nan")),
               "diffusion_model.layers.0.attention.to_q.lora_B.weight": torch.randn(DIM, 2)}, str(files["nan"]))
    files["wide"] = save_in_format(make_random_lora(48, 2, ALL[:5]), tmp_path / "wide.safetensors", "ai-toolkit")
    (tmp_path / "bad.yaml").write_text("loras: [\n")
    (tmp_path / "missing.yaml").write_text("loras:\n  - {path: nowhere.safetensors, ratio: 1}\n")
    return files


@pytest.mark.parametrize("argv, needle", [
    (["merge", "{a}", "{b}", "-o", "{out}"], "--ratio is required once per LoRA (2 given)"),
    (["merge", "{a}", "{b}", "--ratio", "1", "--ratio", "2", "--ratio", "3", "-o", "{out}"], "got 3"),
    (["merge", "-o", "{out}"], "no LoRA given"),
    (["merge", "{a}", "--recipe", "{dir}/missing.yaml", "-o", "{out}"], "not both"),
    (["merge", "--recipe", "{dir}/missing.yaml", "--w1", "2", "-o", "{out}"], "not both"),
    (["merge", "--recipe", "{dir}/nope.yaml", "-o", "{out}"], "recipe not found"),
    (["merge", "--recipe", "{dir}/bad.yaml", "-o", "{out}"], "not valid YAML at line"),
    (["merge", "--recipe", "{dir}/missing.yaml", "-o", "{out}"], "nowhere.safetensors: file not found"),
    (["merge", "{a}", "--ratio", "1", "--layers", "0-9", "-o", "{out}"], "is not RANGE=WEIGHT"),
    (["merge", "{a}", "--ratio", "1", "--layers", "0-9=x", "-o", "{out}"], "is not RANGE=WEIGHT"),
    (["merge", "{a}", "--ratio", "1", "--layers", "0-9=1,5-12=2", "-o", "{out}"], "overlap at layer 5"),
    (["merge", "{a}", "--ratio", "1", "--layers", "20-30=1", "-o", "{out}"], "'20-30' is outside 0-29"),
    (["merge", "{a}", "--ratio", "1", "--layers", "late=1", "-o", "{out}"], "bad layer key 'late'"),
    (["merge", "{a}", "--ratio", "nan", "-o", "{out}"], "is not a number"),
    (["merge", "{a}", "--ratio", "1", "--rank", "0", "-o", "{out}"], "--rank 0"),
    (["merge", "{a}", "--ratio", "0", "-o", "{out}"], "every module has scale 0"),
    (["merge", "{a}", "--ratio", "1", "-o", "{dir}/out.ckpt"], "must be a .safetensors file"),
    (["merge", "{a}", "--ratio", "1", "-o", "{a}", "--force"], "is one of the input LoRAs"),
    (["merge", "{dir}/nope.safetensors", "--ratio", "1", "-o", "{out}"], "file not found"),
    (["merge", "{dir}/corrupt.safetensors", "--ratio", "1", "-o", "{out}"], "not a readable .safetensors"),
    (["merge", "{dir}/lokr.safetensors", "--ratio", "1", "-o", "{out}"], "DoRA"),
    (["merge", "{dir}/sdxl.safetensors", "--ratio", "1", "-o", "{out}"], "LoRA of SDXL or Stable Diffusion"),
    (["merge", "{dir}/nan.safetensors", "--ratio", "1", "-o", "{out}"], "NaN or Inf"),
    (["merge", "{a}", "{dir}/wide.safetensors", "--ratio", "1", "-o", "{out}"], "cannot be combined"),
    (["inspect", "{a}", "{dir}/lokr.safetensors"], "DoRA"),
    (["inspect", "{dir}"], "is a folder"),
])
def test_rejections_exit_2_with_one_line(tmp_path, capsys, two, argv, needle):
    bad_files(tmp_path)
    _, _, pa, pb = two
    out = tmp_path / "out.safetensors"
    argv = [x.format(a=pa, b=pb, out=out, dir=tmp_path) for x in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("zsearch: error: ") and err.count("\n") == 1, err
    assert needle in err
    assert "Traceback" not in err and stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary file


def test_argparse_errors_also_exit_2(capsys, two):
    _, _, pa, _ = two
    assert run(capsys, "merge", pa, "--ratio", "1")[0] == 2  # no -o
    assert run(capsys, "merge", pa, "--ratio", "x", "-o", "o.safetensors")[0] == 2
    assert run(capsys, "merge", pa, "--ratio", "1", "--dtype", "int8", "-o", "o.safetensors")[0] == 2


def test_console_entry_point_exit_code(tmp_path):
    """The real process: exit status 2 and a single stderr line, no traceback."""
    result = subprocess.run([sys.executable, "-m", "zsearch.cli", "inspect", str(tmp_path / "none.safetensors")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"zsearch: error: {tmp_path / 'none.safetensors'}: file not found; "
                                                  f"check the path"]
