"""What a study leaves for the morning: best.yaml, best.safetensors, best.png, their provenance and summary.
Must not import search/, review/, report/ or commands/.
"""
