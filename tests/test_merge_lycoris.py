"""`zsearch merge` with LoKr/LoHa and modules outside the blocks: a lone LoKr/LoHa stays that kind
(exact), mixed kinds become a randomized-SVD LoRA with its error measured, `other` weighs the
embedders and final layer. Outputs are checked by reading their tensors directly with the
loaders' rules (ComfyUI's LoKr/LoHa alpha rules, diffusers' lora_A/lora_B), not with zsearch."""

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from zsearch.cli import main
from zsearch.lora.merge import merge_loras
from zsearch.lora.read import load_lora

import trainer_layouts as T

pytestmark = pytest.mark.usefixtures("single_thread")

P = "diffusion_model."


def save(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def comfy_lokr_delta(state, base):
    """ComfyUI weight_adapter/lokr.py: dim from w1_b / w2_b when decomposed, alpha / dim, else 1."""
    get = lambda n: state.get(f"{base}.lokr_{n}")
    dim = None
    w1 = get("w1")
    if w1 is None:
        dim = get("w1_b").shape[0]
        w1 = get("w1_a").double() @ get("w1_b").double()
    w2 = get("w2")
    if w2 is None:
        dim = get("w2_b").shape[0]
        w2 = get("w2_a").double() @ get("w2_b").double()
    alpha = state.get(f"{base}.alpha")
    scale = float(alpha) / dim if alpha is not None and dim is not None else 1.0
    return scale * torch.kron(w1.double(), w2.double())


def comfy_loha_delta(state, base):
    g = lambda n: state[f"{base}.hada_{n}"].double()
    scale = float(state[f"{base}.alpha"]) / state[f"{base}.hada_w1_b"].shape[0]
    return scale * (g("w1_a") @ g("w1_b")) * (g("w2_a") @ g("w2_b"))


def lora_delta(state, base):
    return state[f"{base}.lora_B.weight"].double() @ state[f"{base}.lora_A.weight"].double()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("w1, w2", [(False, True), (False, False), (True, True)])
def test_a_lone_lokr_is_written_as_a_scaled_lokr(tmp_path, capsys, w1, w2):
    tensors, expected = {}, {}
    for path in ("layers.0.attention.to_q", "layers.4.feed_forward.w2", "t_embedder.mlp.0"):
        t, e = T.lokr(path, rank=2, alpha=3.0, decompose_w1=w1, decompose_w2=w2)
        tensors.update(t)
        expected.update(e)
    source = save(tmp_path / "lokr.safetensors", tensors)
    out = tmp_path / "out.safetensors"
    code, stdout, err = run(capsys, "merge", source, "--ratio", "0.7", "--ffn", "0.5", "--other", "2", "-o", out)
    assert code == 0, err
    assert "3 kept as lokr" in stdout and "exact" in stdout
    state, _ = read(out)
    assert not any("lora_A" in k for k in state)
    weight = {"layers.0.attention.to_q": 0.7, "layers.4.feed_forward.w2": 0.35, "t_embedder.mlp.0": 1.4}
    for path, want in expected.items():
        assert rel(comfy_lokr_delta(state, P + path), weight[path] * want) < 1e-6, path
        assert rel(load_lora(out).modules[path].delta(torch.float64), weight[path] * want) < 1e-6


def test_a_lone_loha_is_written_as_a_scaled_loha(tmp_path, capsys):
    tensors, expected = T.loha("layers.2.attention.to_k", rank=3, alpha=1.5)
    source = save(tmp_path / "loha.safetensors", tensors)
    out = tmp_path / "out.safetensors"
    code, stdout, err = run(capsys, "merge", source, "--ratio", "-0.4", "-o", out)
    assert code == 0, err
    state, _ = read(out)
    assert rel(comfy_loha_delta(state, P + "layers.2.attention.to_k"), -0.4 * expected["layers.2.attention.to_k"]) < 1e-6


def test_mixed_kinds_become_an_svd_lora_with_the_error_measured(tmp_path, capsys):
    shared, only_lora = "layers.1.feed_forward.w1", "layers.1.attention.to_q"
    lokr_t, lokr_e = T.lokr(shared, rank=2, alpha=2.0)
    lora_t, lora_e = T.kohya([shared, only_lora], rank=4, alpha=4.0)
    a, b = save(tmp_path / "lokr.safetensors", lokr_t), save(tmp_path / "lora.safetensors", lora_t)
    out = tmp_path / "out.safetensors"
    code, stdout, err = run(capsys, "merge", a, b, "--ratio", "0.8", "--ratio", "1.2", "--rank", "6", "-o", out)
    assert code == 0, err
    state, _ = read(out)
    total = 0.8 * lokr_e[shared] + 1.2 * lora_e[shared]
    written = lora_delta(state, P + shared)
    assert state[P + shared + ".lora_A.weight"].shape[0] == 6
    error = rel(written, total)
    # the truncation cannot beat the best rank-6 approximation, and the randomized SVD comes close to it
    s = torch.linalg.svdvals(total)
    best = math.sqrt(float((s[6:] ** 2).sum() / (s ** 2).sum()))
    assert best - 1e-9 <= error <= best * 1.05 + 1e-6
    assert f"  {shared}: LoKr/LoHa delta as a rank-6 LoRA, relative error {error:.3g}" in stdout
    merge_info = json.loads(read(out)[1]["zsearch.merge"])
    assert merge_info["module_errors"][shared] == pytest.approx(error, rel=1e-4)
    # the LoRA-only module is compressed like any rank merge (rank 4 <= 6: exact)
    assert rel(lora_delta(state, P + only_lora), 1.2 * lora_e[only_lora]) < 1e-6


def test_mixed_report_per_module_and_overall(tmp_path):
    paths = ["layers.0.feed_forward.w1", "layers.0.feed_forward.w3"]
    lokr_t, lokr_e, loha_t, loha_e = {}, {}, {}, {}
    for p in paths:
        t, e = T.lokr(p, rank=3, alpha=1.0)
        lokr_t.update(t), lokr_e.update(e)
        t, e = T.loha(p, rank=2, alpha=1.0)
        loha_t.update(t), loha_e.update(e)
    loras = [load_lora(save(tmp_path / "a.safetensors", lokr_t)), load_lora(save(tmp_path / "b.safetensors", loha_t))]
    state, report = merge_loras(loras, [{p: 1.0 for p in paths}, {p: 0.5 for p in paths}], rank=4)
    squares, errors = 0.0, 0.0
    for p in paths:
        total = lokr_e[p] + 0.5 * loha_e[p]
        error = rel(lora_delta(state, P + p), total)
        assert report.errors[p] == pytest.approx(error, rel=1e-4, abs=1e-7)
        squares += float(total.norm() ** 2)
        errors += error ** 2 * float(total.norm() ** 2)
    assert report.relative_error == pytest.approx(math.sqrt(errors / squares), rel=1e-4)
    assert set(report.mixed) == set(paths)


def test_other_weighs_the_modules_outside_the_blocks(tmp_path, capsys):
    tensors, expected = T.aitk(["layers.0.attention.to_q", *T.OTHER_SHAPES])
    source = save(tmp_path / "a.safetensors", tensors)
    out = tmp_path / "out.safetensors"
    code, _, err = run(capsys, "merge", source, "--ratio", "0.5", "--other", "3", "--attn", "2", "-o", out)
    assert code == 0, err
    state, _ = read(out)
    assert rel(lora_delta(state, P + "layers.0.attention.to_q"), 1.0 * expected["layers.0.attention.to_q"]) < 1e-6
    for path in T.OTHER_SHAPES:  # written under diffusers names, which ComfyUI's key map also loads
        assert rel(lora_delta(state, P + path), 1.5 * expected[path]) < 1e-6, path


def test_inspect_shows_kinds_and_modules_outside_the_blocks(tmp_path, capsys):
    tensors, _ = T.aitk(["layers.0.attention.to_q", "cap_embedder.1", "all_final_layer.2-1.linear"])
    more, _ = T.lokr("layers.0.feed_forward.w1", rank=2, alpha=1.0, name="diffusion_model.layers.0.feed_forward.w1")
    source = save(tmp_path / "a.safetensors", {**tensors, **more})
    code, stdout, err = run(capsys, "inspect", source)
    assert code == 0, err
    assert "cap_embedder.1" in stdout and "all_final_layer.2-1.linear" in stdout
    assert "lokr x1" in stdout and "lora x3" in stdout
