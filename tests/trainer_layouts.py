"""LoRA/LoKr/LoHa files laid out as each trainer's own save code writes them (read from their
sources: LyCORIS lokr.py/loha.py, musubi-tuner's lokr.py and convert_lora.py and
convert_z_image_lora_to_comfy.py, kohya sd-scripts, VideoX-Fun, AI-Toolkit), built here
independently of zsearch (never from zsearch.lora.synth), with the delta each trainer means,
computed in float64.

Each builder returns (tensors, {module path: expected delta in float64}).
"""

from __future__ import annotations

import torch

DIM = 32
HIDDEN = int(DIM / 3 * 8)
SHAPES = {  # (out, in) of a Z-Image Linear at width DIM, diffusers path suffix
    "attention.to_q": (DIM, DIM), "attention.to_k": (DIM, DIM), "attention.to_v": (DIM, DIM),
    "attention.to_out.0": (DIM, DIM), "feed_forward.w1": (HIDDEN, DIM), "feed_forward.w2": (DIM, HIDDEN),
    "feed_forward.w3": (HIDDEN, DIM), "adaLN_modulation.0": (4 * DIM, DIM),
}
OTHER_SHAPES = {  # the tiny transformer's modules outside the blocks (cap_feat_dim 16, 16 latent channels)
    "t_embedder.mlp.0": (1024, 256), "t_embedder.mlp.2": (DIM, 1024), "cap_embedder.1": (DIM, 16),
    "all_x_embedder.2-1": (DIM, 64), "all_final_layer.2-1.linear": (64, DIM),
    "all_final_layer.2-1.adaLN_modulation.1": (DIM, DIM),
}


def rand(*shape, seed=[0]):
    seed[0] += 1
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed[0]))


def lora_delta(down, up, scale=1.0):
    return scale * (up.double() @ down.double())


def kohya(modules, rank=4, alpha=2.0, prefix="lora_unet_", dtype=torch.float32):
    """sd-scripts/musubi LoRANetwork: lora_name = prefix + path with '.' -> '_'; alpha saved; scale alpha/rank."""
    tensors, expected = {}, {}
    for path in modules:
        out_f, in_f = SHAPES.get(path.split(".", 2)[-1], None) or OTHER_SHAPES[path]
        down, up = rand(rank, in_f).to(dtype), rand(out_f, rank).to(dtype)
        name = prefix + path.replace(".", "_")
        tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"] = down, up
        tensors[f"{name}.alpha"] = torch.tensor(alpha)
        expected[path] = lora_delta(down, up, alpha / rank)
    return tensors, expected


def aitk(modules, rank=4, names=None, dtype=torch.float32):
    """AI-Toolkit (and ComfyUI's extract node): `diffusion_model.<name>.lora_A/B.weight`, no alpha (scale 1)."""
    tensors, expected = {}, {}
    for path in modules:
        out_f, in_f = SHAPES.get(path.split(".", 2)[-1], None) or OTHER_SHAPES[path]
        down, up = rand(rank, in_f).to(dtype), rand(out_f, rank).to(dtype)
        name = (names or {}).get(path, path)
        tensors[f"diffusion_model.{name}.lora_A.weight"] = down
        tensors[f"diffusion_model.{name}.lora_B.weight"] = up
        expected[path] = lora_delta(down, up)
    return tensors, expected


def musubi_to_diffusers_name(path: str) -> str:
    """musubi-tuner convert_lora.py (to 'other'): lora name with every '_' -> '.', then only the
    attention/feed-forward fixes (to_q/k/v/out, feed_forward): refiner and adaLN names stay mangled."""
    name = ("lora_unet_" + path.replace(".", "_"))[len("lora_unet_"):].replace("_", ".")
    if ".attention.to." in name or ".feed.forward." in name:
        for a, b in (("to.q", "to_q"), ("to.k", "to_k"), ("to.v", "to_v"), ("to.out", "to_out"),
                     ("feed.forward", "feed_forward")):
            name = name.replace(a, b)
    return name


def musubi_converted(modules, rank=4, alpha=2.0):
    """convert_lora.py output: diffusion_model.<mangled>.lora_A/B.weight, each half x sqrt(alpha/rank), no alpha."""
    tensors, expected = {}, {}
    for path in modules:
        out_f, in_f = SHAPES[path.split(".", 2)[-1]]
        down, up = rand(rank, in_f), rand(out_f, rank)
        root = (torch.tensor(alpha) / rank).sqrt()
        name = musubi_to_diffusers_name(path)
        tensors[f"diffusion_model.{name}.lora_A.weight"] = down * root
        tensors[f"diffusion_model.{name}.lora_B.weight"] = up * root
        expected[path] = lora_delta(down * root, up * root)
    return tensors, expected


def musubi_comfy_fused_qkv(layer=0, rank=3, alpha=2.0):
    """convert_z_image_lora_to_comfy.py: q/k/v downs concatenated (3r x D), ups block-diagonal (3D x 3r),
    alpha x 3 (rank is 3x): the scale alpha/r is kept."""
    prefix = f"lora_unet_layers_{layer}_attention_"
    downs = [rand(rank, DIM) for _ in range(3)]
    ups = [rand(DIM, rank) for _ in range(3)]
    up = torch.zeros(3 * DIM, 3 * rank)
    for i, u in enumerate(ups):
        up[i * DIM:(i + 1) * DIM, i * rank:(i + 1) * rank] = u
    tensors = {f"{prefix}qkv.lora_down.weight": torch.cat(downs), f"{prefix}qkv.lora_up.weight": up,
               f"{prefix}qkv.alpha": torch.tensor(alpha * 3)}
    expected = {f"layers.{layer}.attention.{c}": lora_delta(d, u, alpha / rank)
                for c, d, u in zip(("to_q", "to_k", "to_v"), downs, ups)}
    return tensors, expected


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """LyCORIS' factorization (factor -1): the divisor pair (m, n), m <= n, closest to a square."""
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (m, n) if m <= n else (n, m)
    m, n = 1, dimension
    for i in range(1, int(dimension ** 0.5) + 1):
        if dimension % i == 0:
            m, n = i, dimension // i
    return m, n


def lokr(path, rank=2, alpha=1.0, decompose_w1=False, decompose_w2=True, name=None):
    """LyCORIS LokrModule (Linear): w1 (out_l x in_m) whole or w1_a/w1_b, w2 (out_k x in_n) whole or
    w2_a/w2_b, `.alpha`; scale alpha/lora_dim, or 1 when both factors are whole."""
    out_f, in_f = SHAPES.get(path.split(".", 2)[-1], None) or OTHER_SHAPES[path]
    out_l, out_k = factorization(out_f)
    in_m, in_n = factorization(in_f)
    name = name or "lycoris_" + path.replace(".", "_")
    tensors = {}
    if decompose_w1:
        a, b = rand(out_l, rank), rand(rank, in_m)
        tensors[f"{name}.lokr_w1_a"], tensors[f"{name}.lokr_w1_b"] = a, b
        w1 = a.double() @ b.double()
    else:
        tensors[f"{name}.lokr_w1"] = w1 = rand(out_l, in_m)
    if decompose_w2:
        a, b = rand(out_k, rank), rand(rank, in_n)
        tensors[f"{name}.lokr_w2_a"], tensors[f"{name}.lokr_w2_b"] = a, b
        w2 = a.double() @ b.double()
    else:
        tensors[f"{name}.lokr_w2"] = w2 = rand(out_k, in_n)
    tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    scale = 1.0 if not (decompose_w1 or decompose_w2) else (alpha or rank) / rank
    return tensors, {path: scale * torch.kron(w1.double(), w2.double())}


def loha(path, rank=2, alpha=1.0, name=None):
    """LyCORIS LohaModule (Linear): hada_w1_a (out x r), hada_w1_b (r x in), hada_w2_a/b, `.alpha`;
    delta (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r."""
    out_f, in_f = SHAPES.get(path.split(".", 2)[-1], None) or OTHER_SHAPES[path]
    name = name or "lycoris_" + path.replace(".", "_")
    w = {k: rand(*shape) for k, shape in (("w1_a", (out_f, rank)), ("w1_b", (rank, in_f)),
                                           ("w2_a", (out_f, rank)), ("w2_b", (rank, in_f)))}
    tensors = {f"{name}.hada_{k}": v for k, v in w.items()}
    tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    delta = (w["w1_a"].double() @ w["w1_b"].double()) * (w["w2_a"].double() @ w["w2_b"].double()) * alpha / rank
    return tensors, {path: delta}


def musubi_comfy_fused_loha(layer=0, rank=2, alpha=1.0):
    """convert_z_image_lora_to_comfy.py LoHa qkv: block_diag of the w1_a/w2_a, cat of the w1_b/w2_b, alpha x 3."""
    parts = [loha(f"layers.{layer}.attention.{c}", rank, alpha, name=f"n{c}") for c in ("to_q", "to_k", "to_v")]
    name = f"lora_unet_layers_{layer}_attention_qkv"
    pick = lambda key: [p[0][f"n{c}.hada_{key}"] for p, c in zip(parts, ("to_q", "to_k", "to_v"))]
    tensors = {f"{name}.hada_w1_a": torch.block_diag(*pick("w1_a")), f"{name}.hada_w1_b": torch.cat(pick("w1_b")),
               f"{name}.hada_w2_a": torch.block_diag(*pick("w2_a")), f"{name}.hada_w2_b": torch.cat(pick("w2_b")),
               f"{name}.alpha": torch.tensor(alpha * 3)}
    expected = {k: v for p in parts for k, v in p[1].items()}
    return tensors, expected
