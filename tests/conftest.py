"""Test set-up: everything offline, small thread counts for the 2-core CI machine."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory):
    """The tiny offline models, LoRAs and references, built once per test session."""
    from zsearch.demo import build_demo

    return build_demo(tmp_path_factory.mktemp("demo"))
