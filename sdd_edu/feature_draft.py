"""A feature draft (EAGLE, Li et al. 2024): one decoder layer that drafts from the target's own features.

The small draft of the embedded ladder reads tokens alone, through 4 layers of its own.  A feature
draft reads what the target already computed.  At position i it joins

* f_i, the target's *feature* there: the normalised hidden state that the target's head reads to
  choose token i + 1, and
* the embedding of token i + 1, the token actually chosen (under sampling the feature alone cannot
  say which one was drawn),

projects the pair back to the model's width, and runs one decoder layer of the target's own kind.
Its output predicts f_{i+1}; the target's head (reduced to the frequent tokens, as the small draft's)
turns that into a distribution over token i + 2.  Deeper in a draft tree there is no target feature
yet, so the layer reads its own predicted features instead.

Why the features after the final norm: they are exactly what the head reads, so a predicted feature
goes to the head as it is, and the target's verification forward returns them at no extra cost
(``Transformer.forward(features=True)``).

Why one layer: at batch size 1 on a GPU a forward's cost is its number of kernels, which follows the
number of layers; most of what the next token needs is already in the target's feature.

The draft owns its projection, its layer and its KV cache (a ``KVCache`` of one layer); the token
embedding and the head's rows are the target's (``attach``), so the shipped weights hold neither.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import Block, KVCache, Linear, ModelConfig, Transformer, additive_mask, linear, rope_tables


def feature_draft_config(target: ModelConfig, head_size: int = 8192) -> ModelConfig:
    """One layer of the target's own kind (width, heads, MLP), with a head of ``head_size`` tokens (0: all)."""
    return ModelConfig(family=target.family, vocab_size=target.vocab_size, n_layer=1, n_head=target.n_head,
                       n_kv_head=target.n_kv_head, d_model=target.d_model, d_ff=target.d_ff,
                       max_seq_len=target.max_seq_len, norm_eps=target.norm_eps, rope_theta=target.rope_theta,
                       tie_embeddings=True, bos_token_id=target.bos_token_id, eos_token_id=target.eos_token_id,
                       head_size=head_size)


class FeatureDraft(nn.Module):
    """fc([f_i, e(token_{i+1})]) -> one decoder layer -> predicted f_{i+1} -> the target's head."""

    reads_features = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.n_layer != 1:
            raise ValueError(f"a feature draft has one layer, its config says {config.n_layer}")
        self.config = c = config
        self.fc = Linear(2 * c.d_model, c.d_model, bias=True)  # (feature, embedding) -> d
        self.block = Block(c, 0)
        if c.head_size:
            self.register_buffer("head_ids", torch.arange(c.head_size))  # full-vocabulary id of each head row
        if c.family == "llama":
            cos, sin = rope_tables(c.head_dim, c.max_seq_len, c.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self._target: tuple = ()  # the target whose embedding and head the draft reads (not a submodule)
        self._head_rows = None

    def attach(self, target: Transformer) -> "FeatureDraft":
        """Read the token embedding and the head from ``target`` (same width and vocabulary)."""
        tc, c = target.config, self.config
        if (tc.d_model, tc.vocab_size) != (c.d_model, c.vocab_size):
            raise ValueError(f"a feature draft of width {c.d_model} over {c.vocab_size} tokens cannot read a "
                             f"target of width {tc.d_model} over {tc.vocab_size}")
        self._target = (target,)
        self._head_rows = None
        return self

    @property
    def target(self) -> Transformer:
        if not self._target:
            raise RuntimeError("attach(target) first: the draft reads the target's embedding and head")
        return self._target[0]

    @property
    def device(self):
        return self.fc.weight.device

    @property
    def dtype(self):
        return self.fc.weight.dtype

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, max_len: int) -> KVCache:
        return KVCache(self.config, max_len, 1, self.device, self.dtype)

    def head_weight(self) -> torch.Tensor:
        """The target's head rows the draft scores: all of them, or the reduced head's (gathered once)."""
        t = self.target
        w = t.head.weight if t.head is not None else t.tok_emb.weight
        if not self.config.head_size:
            return w
        if torch.is_grad_enabled():
            return w.index_select(0, self.head_ids)
        key = (w.data_ptr(), w.dtype)
        if self._head_rows is None or self._head_rows[0] != key:
            self._head_rows = (key, w.index_select(0, self.head_ids).contiguous())
        return self._head_rows[1]

    def head_logits(self, h: torch.Tensor, extra_head_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B, N, columns) in float32: the head's columns, then those of ``extra_head_ids``."""
        logits = linear(h, self.head_weight())
        if extra_head_ids is not None and extra_head_ids.numel():
            t = self.target
            w = t.head.weight if t.head is not None else t.tok_emb.weight
            logits = torch.cat([logits, linear(h, w.index_select(0, extra_head_ids))], dim=-1)
        return logits.float()

    def forward(self, features: torch.Tensor, next_ids: torch.Tensor, cache: Optional[KVCache] = None,
                position_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                extra_head_ids: Optional[torch.Tensor] = None):
        """(logits (B, N, columns), predicted features (B, N, d)) from features (B, N, d) and the ids (B, N)
        of the token after each.

        Cache, positions and mask work as ``Transformer.forward``'s: slots [cache.length, + N) are written;
        positions default to the next N; the mask is boolean over cached + new slots, causal by default.
        A row's position is that of its token (``next_ids``), the token whose successor it predicts.
        """
        N = next_ids.shape[1]
        if getattr(cache, "static", False) and N <= cache.max_bucket:  # the fast path (sdd_edu/fast.py)
            h = cache.forward_features(self, features, next_ids, position_ids, attention_mask)
        else:
            embedded = self.target.tok_emb(next_ids).to(features.dtype)  # (B, N, d)
            x = self.fc(torch.cat([features, embedded], dim=-1))  # (B, N, d): the pair, projected to the width
            h = self.layer(x, cache, position_ids, attention_mask)  # (B, N, d): the predicted next features
        return self.head_logits(h, extra_head_ids), h

    def layer(self, x: torch.Tensor, cache: Optional[KVCache] = None, position_ids: Optional[torch.Tensor] = None,
              attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The decoder layer over projected inputs x (B, N, d), with RoPE at the rows' positions; cache, positions
        and mask as in ``forward``.  Returns its output (B, N, d), the predicted features."""
        B, N, _ = x.shape
        start = cache.length if cache is not None else 0
        if cache is not None and start + N > cache.max_len:
            raise ValueError(f"feature draft cache full: {start} + {N} > {cache.max_len} slots")
        if position_ids is None:
            position_ids = torch.arange(start, start + N, device=x.device)
        mask = Transformer._attention_mask(attention_mask, start, N, x.device)
        h = self._block(x, position_ids.expand(B, N), cache, start, mask)  # (B, N, d)
        if cache is not None:
            cache.length = start + N
        return h

    def body(self, features, next_ids, position_ids, cache, start, mask) -> torch.Tensor:
        """The forward up to the head at fixed shapes, for the fast path to capture (``fast.FeatureStaticCache``):
        ``start`` a tensor of the rows' cache slots, ``mask`` over every slot; nothing is read back."""
        embedded = self.target.tok_emb(next_ids).to(features.dtype)
        return self._block(self.fc(torch.cat([features, embedded], dim=-1)), position_ids, cache, start, mask)

    def _block(self, x, position_ids, cache, start, mask) -> torch.Tensor:
        rope = None
        if self.config.family == "llama":
            rope = (self.rope_cos[position_ids].unsqueeze(2).to(x.dtype),  # (B, N, 1, hs)
                    self.rope_sin[position_ids].unsqueeze(2).to(x.dtype))
        if mask is not None and mask.dtype == torch.bool:
            mask = additive_mask(mask, x.dtype)
        return self.block(x, rope, cache, start, mask)

    def timed_forward(self, input_ids: torch.Tensor, cache: Optional[KVCache] = None):
        """A forward over ``input_ids`` with zero features, for timing (``measure.roofline``): what it costs
        does not depend on the values it reads."""
        B, N = input_ids.shape
        zeros = torch.zeros(B, N, self.config.d_model, dtype=self.dtype, device=self.device)
        return self(zeros, input_ids, cache)[0]


def feature_loss(draft: FeatureDraft, features: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor,
                 token_weight: float = 0.1, noise: float = 0.0, generator: Optional[torch.Generator] = None,
                 unroll: int = 1):
    """EAGLE's loss on right-padded sequences: feature regression plus cross-entropy to the target's token
    distribution (its head on its own feature, over the draft's head columns).

    features (B, L, d) and tokens (B, L) of the target; valid (B, L) marks real positions.  Row i reads
    (f_i, token_{i+1}) and is scored against f_{i+1}.  ``noise``: uniform noise of this half-width added to
    the features read (robustness to the draft's own, imperfect, features deeper in a tree).
    ``unroll`` > 1: the draft then reads its own predictions, as it does below the root of a tree: pass k
    reads pass k - 1's predicted features (the gradient flows through them) and is scored against the
    features one position further on; the passes' losses are averaged.  (Every row of a pass reads
    predictions, where in a tree only the nodes do: a cheap stand-in for EAGLE-3's training-time test.)
    Returns (loss, {"regression", "tokens", "top1"} of the first pass, "regression_by_pass": every pass's).
    """
    losses, first, regressions = [], None, []
    read = features[:, :-1]
    if noise:
        read = read + (torch.rand(read.shape, generator=generator) * 2 - 1).to(read) * noise
    for k in range(1, unroll + 1):
        after, target = tokens[:, k:], features[:, k:]
        pairs = valid[:, k:].clone()  # (B, L - k): row i of pass k predicts position i + k
        for j in range(k):
            pairs &= valid[:, j:valid.shape[1] - k + j]
        positions = torch.arange(k, features.shape[1], device=features.device)
        logits, predicted = draft(read.to(draft.dtype), after, position_ids=positions)
        regression = F.smooth_l1_loss(predicted.float(), target.float(), reduction="none").mean(-1)  # (B, L - k)
        with torch.no_grad():
            wanted = torch.softmax(draft.head_logits(target.to(draft.dtype)), -1)  # (B, L - k, columns)
        cross = -(wanted * torch.log_softmax(logits, -1)).sum(-1)  # (B, L - k)
        n = pairs.sum().clamp(min=1)
        regression, cross = (regression * pairs).sum() / n, (cross * pairs).sum() / n
        losses.append(regression + token_weight * cross)
        regressions.append(regression.item())
        if first is None:
            top1 = ((logits.argmax(-1) == wanted.argmax(-1)) & pairs).sum() / n
            first = {"regression": regression.item(), "tokens": cross.item(), "top1": top1.item()}
        read = predicted[:, :-1]  # pass k + 1, row i: the prediction of f_{i+k}, beside token i + k + 1
    return sum(losses) / len(losses), {**first, "regression_by_pass": regressions}


def save_feature_draft(draft: FeatureDraft, folder: Path) -> None:
    """fp16 weights (safetensors) and the config, the target's embedding and head left out."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in draft.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "sdd_config.json").write_text(json.dumps(draft.config.to_dict(), indent=1))


def load_feature_draft(folder: Path, target: Transformer) -> FeatureDraft:
    """The feature draft saved in ``folder``, on the target's device and dtype, attached to it."""
    from safetensors.torch import load_file

    config = ModelConfig(**json.loads((Path(folder) / "sdd_config.json").read_text()))
    draft = FeatureDraft(config)
    draft.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
    draft = draft.to(device=target.device, dtype=target.dtype).eval().requires_grad_(False)
    return draft.attach(target)
