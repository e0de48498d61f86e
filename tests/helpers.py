"""Small random checkpoints written by the tests themselves with ``save_pretrained``."""

from __future__ import annotations

import string
from pathlib import Path

import torch

CHARS = string.printable[:95]  # digits, letters, punctuation, space


def tiny_tokenizer():
    """A character-level fast tokenizer: vocab = specials + printable characters (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<unk>": 1}
    for ch in CHARS + "\n\t":
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>",
                                   bos_token="<|endoftext|>")


def tiny_hf_model(family: str, seed: int = 0, vocab_size: int = 128, n_layer: int = 2, d_model: int = 64,
                  max_len: int = 256, **overrides):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_positions=max_len, n_embd=d_model, n_layer=n_layer, n_head=4,
                         bos_token_id=0, eos_token_id=0, **overrides)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=2 * d_model + 32,
                          num_hidden_layers=n_layer, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=max_len, rope_theta=10000.0, tie_word_embeddings=False,
                          bos_token_id=0, eos_token_id=0, **overrides)
        model = LlamaForCausalLM(cfg)
    # random init is small; widen the logits so that greedy choices are not near-ties everywhere
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    return model.eval()


def save_tiny_checkpoint(path: Path, family: str, seed: int = 0, with_tokenizer: bool = True, **kw) -> Path:
    model = tiny_hf_model(family, seed, **kw)
    model.save_pretrained(str(path))
    if with_tokenizer:
        tiny_tokenizer().save_pretrained(str(path))
    return path
