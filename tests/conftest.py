"""Test set-up: everything offline, small thread counts for the 2-core CI machine."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory):
    """The tiny offline models, LoRAs and references, built once per test session."""
    from zsearch.demo.build import build_demo

    return build_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a test module: the tiny models gain nothing from more, and on a busy
    2-core machine a second spinning thread makes small matmuls hundreds of times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
