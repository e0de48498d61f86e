"""The embedded draft: reduced head, training script, shipped weights and the Hugging Face export."""

import json

import pytest
import torch

from sdd_edu.model import ModelConfig, Transformer


def test_reduced_head_gives_zero_probability_outside_it():
    cfg = ModelConfig(family="llama", vocab_size=50, n_layer=1, n_head=2, n_kv_head=1, d_model=16, d_ff=24,
                      max_seq_len=32, head_size=8)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    model.head_ids.copy_(torch.tensor([1, 3, 5, 7, 11, 13, 17, 19]))
    with torch.no_grad():
        logits = model(torch.tensor([[2, 3, 4]]))
        small = model(torch.tensor([[2, 3, 4]]), reduced=True)
    outside = torch.ones(50, dtype=torch.bool)
    outside[model.head_ids] = False
    assert torch.isinf(logits[..., outside]).all() and (logits[..., outside] < 0).all()
    torch.testing.assert_close(logits[..., model.head_ids], small)
    assert torch.softmax(logits, -1)[..., outside].sum() == 0
    assert model.num_parameters == cfg.num_parameters()


@pytest.mark.slow
def test_training_script_runs_a_few_steps_and_resumes(tmp_path, monkeypatch, capsys):
    """data -> train (tiny configuration, two short runs: the second resumes) -> checkpoint, run in this process.
    The prompts come from two of the standard library's files: parsing all of it takes ten seconds here."""
    import sysconfig
    from pathlib import Path

    from sdd_edu import draft_data
    from sdd_edu.train_draft import main

    some = tmp_path / "stdlib"
    some.mkdir()
    for name in ("textwrap.py", "fnmatch.py"):
        (some / name).write_text((Path(sysconfig.get_paths()["stdlib"]) / name).read_text(encoding="utf-8"))
    real = draft_data.stdlib_function_prompts
    monkeypatch.setattr(draft_data, "stdlib_function_prompts", lambda: real(root=some))
    assert len(real(root=some)) >= 4
    work = ["--work", str(tmp_path / "work")]
    assert main(work + ["data", "--limit", "4", "--batch", "2", "--new-tokens", "6", "--dtype", "fp32"]) == 0
    assert len(list((tmp_path / "work" / "data").glob("shard-*.npz"))) == 2
    tiny = ["train", "--layers", "1", "--width", "32", "--ff", "48", "--head-size", "256", "--batch-tokens", "512"]
    assert main(work + tiny + ["--epochs", "1"]) == 0
    first = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=False)
    capsys.readouterr()
    assert main(work + tiny + ["--epochs", "2"]) == 0
    assert "resumed at step" in capsys.readouterr().out
    second = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=False)
    assert second["step"] == 2 * first["step"] > 0
    # each session is recorded for the model card
    assert [(h["from_step"], h["to_step"]) for h in second["history"]] == [(0, first["step"]),
                                                                           (first["step"], second["step"])]


def shipped_draft_available():
    from sdd_edu.loading import DRAFT_ASSET

    return (DRAFT_ASSET / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.skipif(not shipped_draft_available(), reason="no draft shipped in this checkout")
def test_shipped_draft_loads_and_fits_the_budget(embedded):
    from sdd_edu.loading import DRAFT_ASSET, load_model

    draft = load_model("smollm2-draft")
    assert draft.config.vocab_size == embedded.config.vocab_size
    assert (DRAFT_ASSET / "model.safetensors").stat().st_size <= 32 * 1024 * 1024
    assert draft.encode("def f(x):") == embedded.encode("def f(x):")


@pytest.mark.slow
@pytest.mark.skipif(not shipped_draft_available(), reason="no draft shipped in this checkout")
def test_hugging_face_export_matches_our_draft(tmp_path):
    from transformers import AutoModelForCausalLM

    from sdd_edu.loading import load_model
    from sdd_edu.loading import export_hf

    draft = load_model("smollm2-draft", dtype="fp32")
    export_hf(draft, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = draft.encode('def add(a, b):\n    """Add two numbers."""\n')
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0]
    ours = draft.model(torch.tensor([ids]))[0]
    head = draft.model.head_ids
    torch.testing.assert_close(theirs[:, head], ours[:, head], atol=1e-4, rtol=1e-4)
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
