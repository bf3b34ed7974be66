"""Small helpers every layer may use: atomic writes, reading YAML, image files.
Must not import any other part of zsearch (errors.py aside), nor torch, diffusers or optuna.
"""
