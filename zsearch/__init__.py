"""zsearch: find the best block weights for Z-Image-Turbo LoRAs automatically."""

__version__ = "0.1.0"
