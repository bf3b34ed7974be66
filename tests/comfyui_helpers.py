"""ComfyUI 0.8 from ../shared/comfyui-0.8 for tests: found, put on sys.path, and a tiny Z-Image model
of ComfyUI's own class (comfy.supported_models.ZImage -> comfy.model_base.Lumina2 -> NextDiT).

ComfyUI is on no package registry: tests skip where the folder is absent, except under CI=true,
where its absence fails them. `ZSEARCH_COMFYUI` points at another copy.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DIM = 32  # the width of tests/trainer_layouts.py
CAP_FEAT_DIM = 16


def comfyui_folder() -> Path | None:
    folder = Path(os.environ.get("ZSEARCH_COMFYUI") or ROOT.parent / "shared" / "comfyui-0.8")
    return folder if (folder / "comfy" / "sd.py").is_file() else None


def require_comfyui() -> Path:
    """The ComfyUI folder; skip without it, fail without it under CI=true."""
    folder = comfyui_folder()
    if folder is None:
        message = "ComfyUI 0.8 not found at ../shared/comfyui-0.8 (or $ZSEARCH_COMFYUI)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI must run the ComfyUI tests")
        pytest.skip(message)
    return folder


@contextmanager
def comfyui_on_path(folder: Path):
    """ComfyUI first on sys.path while the tests that need it run; afterwards its folder is off
    sys.path and the root logger and environment are as they were."""
    root = logging.getLogger()
    handlers, level, environ = list(root.handlers), root.level, dict(os.environ)
    sys.path.insert(0, str(folder))
    try:
        import comfy.cli_args
        comfy.cli_args.args.cpu = True  # before anything imports comfy.model_management
        import comfy.model_management  # noqa: F401
        yield
    finally:
        sys.path.remove(str(folder))
        # ComfyUI's module-level logging calls give the root logger a handler; later tests get theirs back
        root.handlers[:] = handlers
        root.setLevel(level)
        os.environ.clear()
        os.environ.update(environ)


def unet_config(dim: int = DIM, n_layers: int = 3, n_refiner_layers: int = 2) -> dict:
    """A tiny config of Z-Image's NextDiT, as comfy/model_detection.py sets it for width 3840 (head width 16)."""
    return {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": dim, "cap_feat_dim": CAP_FEAT_DIM,
            "n_layers": n_layers, "n_refiner_layers": n_refiner_layers, "qk_norm": True,
            "n_heads": dim // 16, "n_kv_heads": dim // 16, "axes_dims": [8, 4, 4], "axes_lens": [64, 32, 32], "rope_theta": 256.0,
            "ffn_dim_multiplier": 8.0 / 3.0, "multiple_of": 1,  # int(8/3 D): Z-Image's 10240 at 3840
            "z_image_modulation": True, "time_scale": 1000.0}


def tiny_model(dim: int = DIM, n_layers: int = 3, n_refiner_layers: int = 2, seed: int = 0):
    """A ModelPatcher around ComfyUI's Z-Image model class at a tiny width, random float32 weights."""
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.ZImage(unet_config(dim, n_layers, n_refiner_layers))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.diffusion_model.state_dict().values():  # ComfyUI leaves them uninitialised
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def patched_weights(patcher) -> dict[str, torch.Tensor]:
    """The diffusion model's weights with the patcher's patches applied by ComfyUI, then unpatched."""
    cpu = torch.device("cpu")
    patcher.patch_model(device_to=cpu, force_patch_weights=True)
    try:
        return {k: v.detach().clone() for k, v in patcher.model.diffusion_model.state_dict().items()}
    finally:
        patcher.unpatch_model(device_to=cpu)


def base_weights(patcher) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in patcher.model.diffusion_model.state_dict().items()}


class LogCapture(logging.Handler):
    """Every log record ComfyUI emits while active (it reports dropped LoRA keys only as a warning)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self):
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self)


def load_with_comfyui(patcher, state_dict: dict[str, torch.Tensor], strength: float = 1.0):
    """ComfyUI's "Load LoRA" path: comfy.sd.load_lora_for_models; returns (new patcher, log lines)."""
    import comfy.sd

    with LogCapture() as log:
        model, _ = comfy.sd.load_lora_for_models(patcher, None, state_dict, strength, 0.0)
    return model, log.lines


def comfy_key(path: str, dim: int = DIM) -> tuple[str, slice]:
    """Where ComfyUI keeps a diffusers module's weight: (state-dict key, rows). Written here from
    ComfyUI's checkpoint layout, independently of comfy.utils' map: q, k, v are the row thirds of
    the fused `attention.qkv`, `to_out.0` is `attention.out`, the other modules carry ComfyUI names."""
    renamed = {"all_x_embedder.2-1": "x_embedder", "all_final_layer.2-1.linear": "final_layer.linear",
               "all_final_layer.2-1.adaLN_modulation.1": "final_layer.adaLN_modulation.1"}
    if path in renamed:
        return f"{renamed[path]}.weight", slice(None)
    for i, part in enumerate(("to_q", "to_k", "to_v")):
        if path.endswith(f".attention.{part}"):
            return path.replace(f".attention.{part}", ".attention.qkv") + ".weight", slice(i * dim, (i + 1) * dim)
    return path.replace(".attention.to_out.0", ".attention.out") + ".weight", slice(None)


def assert_patched(base: dict[str, torch.Tensor], patched: dict[str, torch.Tensor],
                   deltas: dict[str, torch.Tensor], dim: int = DIM, tol: float = 1e-5) -> None:
    """Every weight ComfyUI patched equals base + the intended delta (float64), and nothing else moved."""
    expected = {k: v.double().clone() for k, v in base.items()}
    for path, delta in deltas.items():
        key, rows = comfy_key(path, dim)
        expected[key][rows] += delta.double()
    for key, want in expected.items():
        got = patched[key].double()
        scale = max(float(want.abs().max()), 1.0)
        error = float((got - want).abs().max()) / scale
        assert error < tol, (key, error)
