"""Merging: exactness against float64 hand computation, SVD re-compression, and the writer."""

import hashlib
import json
import os

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from zsearch.lora.blocks import all_modules
from zsearch.errors import UserError
from zsearch.lora.merge import merge_loras, merge_recipe, merge_to_file
from zsearch.lora.read import load_lora, load_loras
from zsearch.lora.synth import FORMATS, make_random_lora, save_in_format
from zsearch.lora.write import check_output, merge_metadata, save_lora
from zsearch.lora.recipe import load_recipe, parse_recipe

DIM = 32
ALL = [m.path for m in all_modules()]
FIRST_HALF = [m.path for m in all_modules() if not (m.block == "layers" and m.index >= 15)]
SOME = [p for p in ALL if ".attention." in p or p.startswith("layers.2")]


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors gain nothing from threads


def source_delta(lora, path):
    """alpha/rank * B @ A of a synthetic source module, in float64."""
    module = lora.modules[path]
    return module.scale * (module.up.double() @ module.down.double())


def file_deltas(path):
    """B @ A per module of a written file, read with safetensors directly (not zsearch's reader)."""
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        out = {}
        for key in keys:
            if key.endswith(".lora_A.weight"):
                name = key[len("diffusion_model."):-len(".lora_A.weight")]
                up = f.get_tensor(key.replace("lora_A", "lora_B"))
                out[name] = up.double() @ f.get_tensor(key).double()
        return out, keys, f.metadata()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def two_sources(tmp_path, fmt_a, fmt_b, dtype=torch.float32):
    a = make_random_lora(DIM, 4, FIRST_HALF, seed=1, alpha=2.0, dtype=dtype)
    b = make_random_lora(DIM, 6, SOME, seed=2, dtype=dtype)
    pa = save_in_format(a, tmp_path / f"a-{fmt_a}.safetensors", fmt_a)
    pb = save_in_format(b, tmp_path / f"b-{fmt_b}.safetensors", fmt_b)
    return a, b, pa, pb


def some_scales(paths, seed):
    generator = torch.Generator().manual_seed(seed)
    return {p: float(torch.empty(1).uniform_(-1.5, 2.0, generator=generator)) for p in paths}


@pytest.mark.parametrize("fmt_a, fmt_b", [(f, f) for f in FORMATS] + [("kohya-fused", "diffsynth")])
def test_exact_merge_equals_float64_sum_for_every_format(tmp_path, fmt_a, fmt_b):
    a, b, pa, pb = two_sources(tmp_path, fmt_a, fmt_b)
    scales = [some_scales(FIRST_HALF, 10), some_scales(SOME, 11)]
    state, report = merge_loras(load_loras([pa, pb]), scales)
    out = save_lora(state, tmp_path / "out.safetensors", {})
    deltas, keys, _ = file_deltas(out)
    assert all(k.startswith("diffusion_model.") for k in keys)
    expected_paths = set(FIRST_HALF) | set(SOME)
    assert set(deltas) == expected_paths and report.modules == len(expected_paths) and not report.dropped
    for path in expected_paths:
        expected = torch.zeros_like(deltas[path])
        if path in FIRST_HALF:
            expected += scales[0][path] * source_delta(a, path)
        if path in SOME:
            expected += scales[1][path] * source_delta(b, path)
        assert rel(deltas[path], expected) < 1e-5, path


def test_exact_rank_is_the_sum_of_ranks(tmp_path):
    _, _, pa, pb = two_sources(tmp_path, "ai-toolkit", "diffusers")
    loras = load_loras([pa, pb])
    _, report = merge_loras(loras, [dict.fromkeys(ALL, 1.0)] * 2)
    assert report.ranks["layers.2.attention.to_q"] == 10  # in both
    assert report.ranks["layers.0.feed_forward.w1"] == 4  # only in the first
    assert report.ranks["layers.20.attention.to_q"] == 6  # only in the second (layers 15+ missing in a)
    assert report.rank is None and report.relative_error == 0.0 and "exact" in report.summary()


def test_zero_scales_drop_modules_and_missing_scales_weigh_zero(tmp_path):
    _, _, pa, pb = two_sources(tmp_path, "ai-toolkit", "kohya")
    loras = load_loras([pa, pb])
    zero_everywhere = "layers.2.attention.to_q"
    scales_a = {p: (0.0 if p == zero_everywhere else 1.0) for p in FIRST_HALF}
    scales_b = {p: 1.0 for p in SOME if p != zero_everywhere}  # missing = 0
    state, report = merge_loras(loras, [scales_a, scales_b])
    assert f"diffusion_model.{zero_everywhere}.lora_A.weight" not in state
    assert report.dropped == [zero_everywhere]
    # zero for one LoRA only: the module holds the other's delta alone, at its own rank
    scales_a["layers.3.attention.to_k"] = 0.0
    state, report = merge_loras(loras, [scales_a, scales_b])
    assert report.ranks["layers.3.attention.to_k"] == 6


def test_dtype_default_follows_inputs_and_can_be_chosen(tmp_path):
    _, _, pa, pb = two_sources(tmp_path, "ai-toolkit", "kohya", dtype=torch.bfloat16)
    loras = load_loras([pa, pb])
    ones = [dict.fromkeys(ALL, 1.0)] * 2
    state, _ = merge_loras(loras, ones)
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    state, _ = merge_loras(loras, ones, dtype=torch.float16)
    assert {t.dtype for t in state.values()} == {torch.float16}
    mixed = [loras[0], load_lora(save_in_format(make_random_lora(DIM, 2, SOME), tmp_path / "f.safetensors", "diffsynth"))]
    state, _ = merge_loras(mixed, ones)
    assert {t.dtype for t in state.values()} == {torch.float32}


def test_different_widths_and_bad_rank_are_user_errors():
    a = make_random_lora(32, 2, ["layers.0.attention.to_q"])
    b = make_random_lora(48, 2, ["layers.0.attention.to_q"])
    with pytest.raises(UserError, match="different models"):
        merge_loras([a, b], [{}, {}])
    with pytest.raises(UserError, match="positive whole number"):
        merge_loras([a], [{}], rank=0)


def test_rank_merge_reports_the_error_it_makes(tmp_path):
    a = make_random_lora(DIM, 8, ALL[:40], seed=1, alpha=4.0)
    b = make_random_lora(DIM, 8, ALL[:40], seed=2)
    scales = [some_scales(ALL[:40], 3), some_scales(ALL[:40], 4)]
    state, report = merge_loras([a, b], scales, rank=5)
    out = save_lora(state, tmp_path / "r5.safetensors", {})
    deltas, _, _ = file_deltas(out)
    sq_err = sq_norm = 0.0
    for path in ALL[:40]:
        exact = scales[0][path] * source_delta(a, path) + scales[1][path] * source_delta(b, path)
        assert state[f"diffusion_model.{path}.lora_A.weight"].shape[0] == 5
        error = rel(deltas[path], exact)
        assert report.errors[path] == pytest.approx(error, rel=1e-4)
        # Eckart-Young: nothing of rank 5 does better than the truncated SVD of the full delta
        sigma = torch.linalg.svdvals(exact)
        assert error == pytest.approx((sigma[5:].norm() / sigma.norm()).item(), rel=1e-4)
        sq_err += (deltas[path] - exact).norm().item() ** 2
        sq_norm += exact.norm().item() ** 2
    assert report.relative_error == pytest.approx((sq_err / sq_norm) ** 0.5, rel=1e-4)
    assert 0.05 < report.relative_error < 1
    worst_path, worst = report.max_error
    assert worst == max(report.errors.values()) and worst_path in ALL[:40]
    assert "SVD to rank 5: relative error" in report.summary()


def test_rank_at_least_the_total_rank_is_exact():
    a = make_random_lora(DIM, 3, ALL[:10], seed=1)
    b = make_random_lora(DIM, 2, ALL[:10], seed=2)
    state, report = merge_loras([a, b], [dict.fromkeys(ALL, 1.0), dict.fromkeys(ALL, -0.5)], rank=16)
    assert report.relative_error < 1e-7
    path = ALL[0]
    got = state[f"diffusion_model.{path}.lora_B.weight"].double() @ state[f"diffusion_model.{path}.lora_A.weight"].double()
    assert rel(got, source_delta(a, path) - 0.5 * source_delta(b, path)) < 1e-5
    assert report.ranks[path] == 5


def test_merge_recipe_applies_ratio_component_and_layer(tmp_path):
    _, _, pa, pb = two_sources(tmp_path, "kohya", "comfyui")
    a = load_lora(pa)
    b = load_lora(pb)
    recipe = parse_recipe({"loras": [
        {"path": pa.name, "ratio": 0.8, "components": {"attn": 0.5, "to_v": 2.0}, "layers": {"0-4": 3.0}},
        {"path": pb.name, "ratio": -0.25, "layers": {"noise_refiner": 0.0}},
    ]}, "test", tmp_path)
    state, report = merge_recipe(recipe)
    got = {}
    for path in ("layers.0.attention.to_v", "layers.2.attention.to_q", "layers.7.feed_forward.w2",
                 "noise_refiner.0.attention.to_q", "noise_refiner.1.feed_forward.w1"):
        up = state[f"diffusion_model.{path}.lora_B.weight"].double()
        got[path] = up @ state[f"diffusion_model.{path}.lora_A.weight"].double()
    da, db = (lambda p: source_delta(a, p)), (lambda p: source_delta(b, p))
    assert rel(got["layers.0.attention.to_v"], 0.8 * 2.0 * 3.0 * da("layers.0.attention.to_v")
               - 0.25 * db("layers.0.attention.to_v")) < 1e-5
    assert rel(got["layers.2.attention.to_q"], 0.8 * 0.5 * 3.0 * da("layers.2.attention.to_q")
               - 0.25 * db("layers.2.attention.to_q")) < 1e-5
    assert rel(got["layers.7.feed_forward.w2"], 0.8 * da("layers.7.feed_forward.w2")) < 1e-5
    assert rel(got["noise_refiner.0.attention.to_q"], 0.8 * 0.5 * da("noise_refiner.0.attention.to_q")) < 1e-5
    assert rel(got["noise_refiner.1.feed_forward.w1"], 0.8 * da("noise_refiner.1.feed_forward.w1")) < 1e-5


# ---- writer ---------------------------------------------------------------------------------

def test_output_reads_back_as_ai_toolkit(tmp_path):
    _, _, pa, pb = two_sources(tmp_path, "kohya-fused", "diffusers")
    loras = load_loras([pa, pb])
    state, _ = merge_loras(loras, [dict.fromkeys(ALL, 0.7), dict.fromkeys(ALL, 1.3)])
    merged = load_lora(save_lora(state, tmp_path / "m.safetensors", {}))
    assert merged.format == "ai-toolkit" and merged.dim == DIM
    path = "layers.1.attention.to_k"
    expected = 0.7 * loras[0].modules[path].delta(torch.float64) + 1.3 * loras[1].modules[path].delta(torch.float64)
    assert rel(merged.modules[path].delta(torch.float64), expected) < 1e-5


def test_existing_output_needs_force(tmp_path):
    state = {"diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.ones(1, DIM),
             "diffusion_model.layers.0.attention.to_q.lora_B.weight": torch.ones(DIM, 1)}
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"user data")
    with pytest.raises(UserError, match="already exists.*--force"):
        save_lora(state, out, {})
    assert out.read_bytes() == b"user data"
    save_lora(state, out, {"note": "x"}, force=True)
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["note"] == "x"
    assert sorted(os.listdir(tmp_path)) == ["o.safetensors"]  # no temporary file left behind


def test_inputs_are_never_overwritten_even_with_force(tmp_path):
    lora_path = save_in_format(make_random_lora(DIM, 2, ALL[:3]), tmp_path / "in.safetensors", "ai-toolkit")
    before = lora_path.read_bytes()
    link = tmp_path / "link.safetensors"
    link.symlink_to(lora_path)
    hard = tmp_path / "hard.safetensors"
    os.link(lora_path, hard)
    for target in (lora_path, tmp_path / "." / "in.safetensors", link, hard):
        with pytest.raises(UserError, match="is one of the input LoRAs"):
            save_lora({}, target, {}, force=True, inputs=[lora_path])
    assert lora_path.read_bytes() == before


def test_bad_output_names(tmp_path):
    with pytest.raises(UserError, match="must be a .safetensors file"):
        check_output(tmp_path / "out.ckpt")
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        check_output(tmp_path / "d.safetensors", force=True)


def test_metadata_records_sources_recipe_and_version_and_replays(tmp_path):
    (tmp_path / "loras").mkdir()
    _, _, pa, pb = two_sources(tmp_path / "loras", "ai-toolkit", "kohya")
    recipe = parse_recipe({"loras": [{"path": str(pa), "ratio": 0.5, "components": {"ffn": 2.0}},
                                     {"path": str(pb), "ratio": 1.0, "layers": {"0-9": 0.5}}]}, "t", tmp_path)
    out = tmp_path / "out" / "merged.safetensors"
    state, _ = merge_recipe(recipe)
    save_lora(state, out, merge_metadata(recipe, out), inputs=[pa, pb])
    _, _, meta = file_deltas(out)
    import zsearch
    assert meta["zsearch.version"] == zsearch.__version__
    sources = json.loads(meta["zsearch.sources"])
    assert sources == [{"file": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in (pa, pb)]
    data = yaml.safe_load(meta["zsearch.lora.recipe"])
    assert data["loras"][0]["path"] == pa.name  # a shared file names no folder of this machine
    assert data["loras"][1]["layers"] == {"0-9": 0.5}
    # the recipe in the metadata, saved beside the LoRAs, reproduces the output bit for bit
    replay = pa.parent / "recipe.yaml"
    replay.write_text(meta["zsearch.lora.recipe"])
    again, _ = merge_recipe(load_recipe(replay))
    assert again.keys() == state.keys() and all(torch.equal(again[k], state[k]) for k in state)



@pytest.mark.parametrize("rank, dtype", [(None, torch.float32), (None, torch.bfloat16), (5, torch.float16), (3, None)])
def test_streamed_file_equals_the_in_memory_merge(tmp_path, rank, dtype):
    # ranks 4 and 6 on overlapping modules: some modules have one LoRA (rank 4 < 5), some both
    a, b, pa, pb = two_sources(tmp_path, "ai-toolkit", "kohya", dtype=torch.bfloat16)
    loras = load_loras([pa, pb])
    scales = [some_scales(ALL, 5), some_scales(ALL, 6)]
    scales[1][SOME[0]] = 0.0  # a dropped term
    state, expected = merge_loras(loras, scales, rank=rank, dtype=dtype)
    out = tmp_path / "streamed.safetensors"
    report = merge_to_file(loras, scales, out, {"note": "streamed"}, rank=rank, dtype=dtype, inputs=[pa, pb])

    written = load_file(str(out))
    assert list(written) == list(state)  # same keys, in model order
    for key, tensor in state.items():
        assert written[key].dtype == tensor.dtype and torch.equal(written[key], tensor), key
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == {"format": "pt", "note": "streamed"}
    assert report.ranks == expected.ranks and report.errors == expected.errors
    assert report.relative_error == expected.relative_error and report.dropped == expected.dropped
    header_length = int.from_bytes(out.read_bytes()[:8], "little")
    assert header_length % 8 == 0


def test_streamed_metadata_can_depend_on_the_result_and_outgrow_the_header(tmp_path):
    a, b, pa, pb = two_sources(tmp_path, "ai-toolkit", "diffusers")
    loras = load_loras([pa, pb])
    scales = [dict.fromkeys(ALL, 1.0), dict.fromkeys(ALL, -0.5)]
    state, _ = merge_loras(loras, scales, rank=2)
    seen = []

    def metadata(report):
        seen.append(report.modules)
        # long only once the merge is done: the header must then grow behind the data
        return {"error": repr(report.relative_error), "pad": "x" * (5000 if report.modules else 0)}

    out = tmp_path / "grown.safetensors"
    report = merge_to_file(loras, scales, out, metadata, rank=2)
    assert seen == [0, len(state) // 2]
    written = load_file(str(out))
    assert all(torch.equal(written[k], v) for k, v in state.items()) and len(written) == len(state)
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["error"] == repr(report.relative_error) and len(f.metadata()["pad"]) == 5000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_streamed_merge_refuses_like_save_lora(tmp_path):
    a, b, pa, pb = two_sources(tmp_path, "ai-toolkit", "diffusers")
    loras = load_loras([pa, pb])
    ones = [dict.fromkeys(ALL, 1.0)] * 2
    with pytest.raises(UserError, match="is one of the input LoRAs"):
        merge_to_file(loras, ones, pa, {}, force=True, inputs=[pa, pb])
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"user data")
    with pytest.raises(UserError, match="already exists"):
        merge_to_file(loras, ones, out, {})
    with pytest.raises(UserError, match="every module has scale 0"):
        merge_to_file(loras, [{}, {}], out, {}, force=True)
    assert out.read_bytes() == b"user data"
