"""ComfyUI nodes that apply zsearch's recipes: "Z-Image LoRAs (zsearch recipe)" and "Z-Image LoRA
block weights". `zsearch comfyui install COMFYUI_FOLDER` writes the shim that loads them.

It owns the nodes and how they patch a ComfyUI model. At import time it must not import optuna,
diffusers, open_clip or zsearch's engine/study/search: only the pure tensor parts (lora/, errors,
util/), so a ComfyUI start never pays for them. ComfyUI itself is imported inside the node functions.
"""

from zsearch.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
