"""ComfyUI nodes that apply zsearch's recipes: "Z-Image LoRAs (zsearch recipe)" and "Z-Image LoRA
block weights". `zsearch comfyui install COMFYUI_FOLDER` writes the shim that loads them.

Only zsearch's pure tensor parts (lora/, errors, util/) are imported here: a ComfyUI start never
pays for optuna, diffusers or open_clip. ComfyUI itself is imported inside the node functions.
"""

from zsearch.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
