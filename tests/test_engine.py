"""The compact engine is the same model as the reference implementation, and its cache is exact."""

import pytest
import torch

from sdd_edu.loading import load_model
from sdd_edu.model import ModelConfig, Transformer
from tests.helpers import tiny_hf_model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_tiny_checkpoint_logits_match_transformers(family, tmp_path):
    ref = tiny_hf_model(family, seed=1)
    ref.save_pretrained(str(tmp_path))
    ours = load_model(str(tmp_path), device="cpu", dtype="fp32")
    assert ours.tokenizer is None  # no tokenizer saved: model-only checkpoints load too
    ids = torch.randint(0, 128, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    expected = hf_logits(ref, ids)
    got = ours.model(torch.tensor([ids]))[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # the one-row decoding path (a different matmul kernel) agrees too
    cache = ours.model.new_cache(64)
    ours.model(torch.tensor([ids[:-1]]), cache)
    last = ours.model(torch.tensor([ids[-1:]]), cache)[0, -1]
    torch.testing.assert_close(last, expected[-1], atol=1e-4, rtol=1e-4)


def test_pytorch_bin_checkpoints_load(tmp_path):
    ref = tiny_hf_model("gpt2", seed=2)
    ref.save_pretrained(str(tmp_path))
    (tmp_path / "model.safetensors").unlink()  # keep only the older PyTorch format
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    ours = load_model(str(tmp_path), device="cpu", dtype="fp32")
    ids = list(range(5, 30))
    torch.testing.assert_close(ours.model(torch.tensor([ids]))[0], hf_logits(ref, ids), atol=1e-4, rtol=1e-4)


def test_parameter_count_matches_config(tiny_gpt2_dir, tiny_llama_dir):
    for path in (tiny_gpt2_dir, tiny_llama_dir):
        m = load_model(str(path), device="cpu", dtype="fp32")
        assert m.model.num_parameters == m.config.num_parameters()


@pytest.mark.slow
def test_embedded_logits_match_transformers_gguf(embedded):
    from sdd_edu.measure.engine_bench import load_reference

    ref = load_reference("smollm2-135m", embedded, kept=False)  # transformers reads the GGUF file itself
    ids = embedded.encode("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n")
    expected = hf_logits(ref, ids)
    torch.testing.assert_close(embedded.model(torch.tensor([ids]))[0], expected, atol=2e-3, rtol=1e-4)
    assert embedded.config.vocab_size == 49152 and embedded.config.n_layer == 30
    # the copy kept on disk for later loads (made now if no notebook or test made it before) is that reading
    kept = load_reference("smollm2-135m", embedded)
    assert type(kept) is type(ref) and kept.config.to_dict().keys() <= ref.config.to_dict().keys()
    theirs, mine = ref.state_dict(), kept.state_dict()
    assert theirs.keys() == mine.keys() and all(torch.equal(theirs[k], mine[k]) for k in theirs)


@pytest.mark.slow
def test_embedded_greedy_ids_match_transformers(embedded):
    from sdd_edu.data import humaneval_prompt
    from sdd_edu.decoding import baseline_decode
    from sdd_edu.measure.engine_bench import hf_greedy, load_reference

    ref = load_reference("smollm2-135m", embedded)
    for task in (0, 7, 12):
        ids = embedded.encode(humaneval_prompt(task))
        ours = baseline_decode(embedded, ids, 24, stop_at_eos=False).token_ids
        theirs, _ = hf_greedy(ref, ids, 24, embedded.device)
        assert ours == theirs, f"HumanEval/{task}: {ours} != {theirs}"


def test_embedded_second_load_uses_cache(embedded):
    from sdd_edu.loading import cache_dir, embedded_gguf_path

    converted = cache_dir() / embedded_gguf_path().stem / "model.safetensors"
    assert converted.exists()
    again = load_model("embedded", device="cpu")
    assert again.load_seconds < 20  # no dequantisation the second time (typically about a second)


# ------------------------------------------------------------------------ cache and masks (tiny models)

def small_model(family, seed=0, max_seq_len=128):
    torch.manual_seed(seed)
    cfg = ModelConfig(family=family, vocab_size=97, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else 4,
                      d_model=32, d_ff=48, max_seq_len=max_seq_len)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cached_decoding_equals_recomputation(family):
    model = small_model(family)
    ids = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(1))
    full = model(ids)[0]  # (T, V), no cache
    cache = model.new_cache(40)
    parts = [model(ids[:, :11], cache)[0]]
    for t in range(11, 30):
        parts.append(model(ids[:, t:t + 1], cache)[0])
    torch.testing.assert_close(torch.cat(parts), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 30


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_tree_mask_forward_equals_each_root_to_node_chain(family):
    from sdd_edu.decoding.tree import tree_attention_mask

    model = small_model(family)
    prefix = [5, 9, 13, 2, 7]
    # root chain token 40, then a tree:   0:a  1:b(<-0)  2:c(<-0)  3:d  4:e(<-3)  5:f(<-1)
    tokens = [11, 12, 13, 21, 22, 31]
    parents = [-1, 0, 0, -1, 3, 1]
    cache = model.new_cache(32)
    model(torch.tensor([prefix]), cache)
    mask, pos = tree_attention_mask(parents, cached=cache.length, chain=1)
    out = model(torch.tensor([[40] + tokens]), cache, position_ids=pos, attention_mask=mask)[0]

    def chain_of(i):
        path = []
        while i >= 0:
            path.append(tokens[i])
            i = parents[i]
        return path[::-1]

    for i in range(len(tokens)):
        alone = model(torch.tensor([prefix + [40] + chain_of(i)]))[0, -1]
        torch.testing.assert_close(out[1 + i], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_keeping_a_cache_subset_equals_recomputation(family):
    from sdd_edu.decoding.tree import tree_attention_mask

    model = small_model(family)
    prefix = [3, 1, 4, 1, 5, 9]
    tokens, parents = [20, 21, 22, 23, 24], [-1, -1, 0, 2, 1]
    cache = model.new_cache(32)
    model(torch.tensor([prefix]), cache)
    start = cache.length
    mask, pos = tree_attention_mask(parents, cached=start, chain=1)
    model(torch.tensor([[8] + tokens]), cache, position_ids=pos, attention_mask=mask)
    # accept root 8 and the path 20 -> 22 -> 23 (slots 0, 1, 3, 4 after start), then continue with 77
    cache.keep(start, [0, 1, 3, 4])
    assert cache.length == start + 4
    nxt = model(torch.tensor([[77]]), cache)[0, -1]
    fresh = model(torch.tensor([prefix + [8, 20, 22, 23, 77]]))[0, -1]
    torch.testing.assert_close(nxt, fresh, atol=1e-5, rtol=1e-5)
    # truncation: drop back to the prefix and decode again
    cache.truncate(start)
    again = model(torch.tensor([[8, 20]]), cache)[0, -1]
    torch.testing.assert_close(again, model(torch.tensor([prefix + [8, 20]]))[0, -1], atol=1e-5, rtol=1e-5)


def test_single_row_fast_path_matches_linear():
    from sdd_edu.model import Linear

    torch.manual_seed(0)
    lin = Linear(96, 64, bias=True)
    for rows in (1, 3, 16, 17):
        x = torch.randn(1, rows, 96)
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)
        # the columns are a strided view of x's storage: rows that start past its beginning, or not contiguous
        for part in (torch.randn(1, rows + 2, 96)[:, 2:], torch.randn(1, rows, 192)[..., ::2]):
            torch.testing.assert_close(lin(part), torch.nn.functional.linear(part, lin.weight, lin.bias),
                                       atol=1e-5, rtol=1e-5)


def test_keys_and_values_share_one_cache_tensor():
    model = small_model("llama")
    cache = model.new_cache(16)
    model(torch.tensor([[1, 2, 3]]), cache)
    nkv = model.config.n_kv_head
    assert cache.k.shape == cache.v.shape == (2, 1, nkv, 16, model.config.head_dim)  # (nl, B, nkv, S, hs)
    assert torch.equal(cache.kv[:, :, :nkv], cache.k) and torch.equal(cache.kv[:, :, nkv:], cache.v)
    assert cache.k.abs().sum() > 0 and cache.v[:, :, :, 3:].abs().sum() == 0  # three slots written, no more
    assert all(layer.data_ptr() == cache.kv[i].data_ptr() for i, layer in enumerate(cache.layers))  # views


def test_rope_tables_of_one_head_are_widened_to_the_fused_heads():
    """A block given the (B, N, 1, hs) rows of the rope tables computes what the forward computes (it widens
    them to every q, k and v head, the v heads turned by angle zero)."""
    from sdd_edu.model import head_rope

    model = small_model("llama")
    x = torch.tensor([[5, 9, 13]])
    cos, sin = model.rope_cos[:3][None, :, None], model.rope_sin[:3][None, :, None]  # (1, 3, 1, hs)
    mask = model._attention_mask(None, 0, 3, x.device)
    h = model.tok_emb(x)
    c = model.config
    wide = head_rope(cos, sin, c.n_head + c.n_kv_head, c.n_kv_head)
    assert wide[0].shape == (1, 3, c.n_head + 2 * c.n_kv_head, 2, c.head_dim // 2)
    assert torch.equal(wide[0][:, :, -c.n_kv_head:], torch.ones_like(wide[0][:, :, -c.n_kv_head:]))
    assert torch.equal(wide[1][:, :, -c.n_kv_head:], torch.zeros_like(wide[1][:, :, -c.n_kv_head:]))
    torch.testing.assert_close(model.blocks[0](h, (cos, sin), None, 0, mask), model.blocks[0](h, wide, None, 0, mask))
    full = model.norm(model.blocks[1](model.blocks[0](h, (cos, sin), None, 0, mask), (cos, sin), None, 0, mask))
    torch.testing.assert_close(full, model.body(x, torch.arange(3)[None], None, 0, mask), atol=1e-6, rtol=1e-6)


def test_cache_errors():
    model = small_model("llama", max_seq_len=16)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model.new_cache(17)
    cache = model.new_cache(8)
    with pytest.raises(ValueError, match="cache full"):
        model(torch.zeros(1, 9, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(3)
