"""Shared fixtures.  No test touches the network: the repository's root conftest.py switches the hub off
before anything imports it."""

import pytest
import torch

from tests.helpers import save_tiny_checkpoint


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M (converted once, then read from the user cache)."""
    from sdd_edu.loading import load_model

    return load_model("embedded", device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("gpt2"), "gpt2", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("llama"), "llama", seed=0)


@pytest.fixture(params=["gpt2", "llama"])
def tiny_model(request, tiny_gpt2_dir, tiny_llama_dir):
    from sdd_edu.loading import load_model

    torch.manual_seed(0)
    return load_model(str(tiny_gpt2_dir if request.param == "gpt2" else tiny_llama_dir), device="cpu", dtype="fp32")
