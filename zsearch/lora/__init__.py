"""Z-Image's module taxonomy (blocks), recipes, and LoRA files: read every layout, merge, write, inspect.
Pure tensor code: must not import engine/, judges/, study/ or any library of the GPU path (optuna, diffusers, open_clip).
"""
