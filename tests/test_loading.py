"""Model names, devices and dtypes, and the offline hub message."""

import pytest
import torch

from sdd_edu import SddError
from sdd_edu.loading import load_model, resolve_device, resolve_dtype


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(SddError) as err:
        load_model("gpt5-mega")
    assert "gpt2-large" in str(err.value) and "smollm2-135m" in str(err.value)


def test_offline_hub_model_says_how_to_fetch_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SddError) as err:
        load_model("gpt2-large")
    msg = str(err.value)
    assert "gpt2-large" in msg and "huggingface-cli download gpt2-large" in msg and "HF_HUB_OFFLINE" in msg


def test_devices_and_dtypes():
    assert resolve_device(None).type in ("cpu", "cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(SddError, match="dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(SddError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SddError, match="CUDA"):
            resolve_device("cuda")


def test_bf16_engine_runs(tiny_llama_dir):
    m = load_model(str(tiny_llama_dir), device="cpu", dtype="bf16")
    assert m.dtype == torch.bfloat16
    logits = m.model(torch.tensor([[1, 2, 3]]))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_missing_checkpoint_files(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(SddError, match="no \\*.safetensors"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(SddError):
        load_model(str(tmp_path))
