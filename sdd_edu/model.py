"""A compact decoder-only transformer covering the GPT-2 and Llama families.

One file, read top to bottom: config, KV cache, the building blocks, the model.

The forward pass takes N new tokens with their own position ids and an optional
boolean attention mask over [cached slots + new slots].  That one call serves
every decoder in the package:

* one-token decoding       N = 1, no mask (attend to everything cached);
* a chain of draft tokens  N = gamma, causal mask (the default when N > 1);
* a token tree             N = nodes, each node attends to the cache and to its
                           ancestors only (see ``sdd_edu.tree.tree_attention_mask``).

Keys and values are written into a preallocated cache at slots
``[cache.length, cache.length + N)``.  Rejected drafts need no rollback: the next
write simply overwrites them (``truncate``), and the accepted path of a tree is
kept by copying its slots down (``keep``), never by recomputing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

FAMILIES = ("gpt2", "llama")


@dataclass
class ModelConfig:
    family: str  # "gpt2": learned positions, LayerNorm, GELU; "llama": RoPE, RMSNorm, SwiGLU, GQA
    vocab_size: int
    n_layer: int
    n_head: int
    n_kv_head: int  # == n_head for GPT-2; fewer for grouped-query attention
    d_model: int
    d_ff: int
    max_seq_len: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    # > 0: the output head covers only this many tokens (buffer ``head_ids``; tied to their embeddings);
    # every other token gets probability zero.  Small drafts use it: the full head would dominate their cost.
    head_size: int = 0

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; expected one of {FAMILIES}")
        if self.d_model % self.n_head or self.n_head % self.n_kv_head:
            raise ValueError("d_model must divide by n_head, and n_head by n_kv_head")
        if self.head_size and not (self.tie_embeddings and 0 < self.head_size <= self.vocab_size):
            raise ValueError("a reduced head needs tied embeddings and 0 < head_size <= vocab_size")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    def num_parameters(self) -> int:
        """Parameter count implied by the config (tied head counted once)."""
        d, hd, L = self.d_model, self.head_dim, self.n_layer
        qkv_out = (self.n_head + 2 * self.n_kv_head) * hd
        if self.family == "gpt2":
            attn = d * qkv_out + qkv_out + d * d + d
            mlp = d * self.d_ff + self.d_ff + self.d_ff * d + d
            norms = 2 * 2 * d
            emb = self.vocab_size * d + self.max_seq_len * d
            final = 2 * d
        else:
            attn = d * qkv_out + d * d
            mlp = 3 * d * self.d_ff
            norms = 2 * d
            emb = self.vocab_size * d
            final = d
        head = 0 if self.tie_embeddings else self.vocab_size * d  # a reduced head reuses embedding rows
        return L * (attn + mlp + norms) + emb + final + head


class KVCache:
    """Preallocated keys/values for every layer, written by slot.

    ``length`` counts the committed slots.  A forward over N tokens writes slots
    [length, length + N) and advances ``length``; ``truncate`` and ``keep`` then
    decide which of those writes survive.

    Keys and values share one tensor, the keys' heads first, in the order the
    layer's fused qkv projection produces them: one write stores both.  ``k`` and
    ``v`` are views of its two halves.
    """

    def __init__(self, config: ModelConfig, max_len: int, batch_size: int = 1,
                 device=None, dtype=torch.float32):
        nkv = config.n_kv_head
        shape = (config.n_layer, batch_size, 2 * nkv, max_len, config.head_dim)
        self.kv = torch.zeros(shape, device=device, dtype=dtype)  # (nl, B, 2 nkv, S, hs)
        self.k, self.v = self.kv[:, :, :nkv], self.kv[:, :, nkv:]  # (nl, B, nkv, S, hs) each
        # one view per layer, made once, not at every step (not ``unbind``: autograd refuses writes to its views)
        self.layers = tuple(self.kv[i] for i in range(config.n_layer))  # (B, 2 nkv, S, hs) each
        self.max_len = max_len
        self.length = 0

    def write(self, layer: int, start, kv: torch.Tensor) -> torch.Tensor:
        """Store keys and values kv (B, 2 nkv, N, hs) at slots [start, start + N); return all slots so far.

        ``start`` may instead be a tensor of N slot indices on the device (the fast path): then the
        writes need no host integer, and every slot is returned (the attention mask decides)."""
        cache = self.layers[layer]  # (B, 2 nkv, S, hs)
        if isinstance(start, torch.Tensor):
            return cache.index_copy_(2, start, kv)
        end = start + kv.shape[2]
        cache[:, :, start:end] = kv
        return cache[:, :, :end]

    def truncate(self, length: int):
        """Forget every slot from ``length`` on (rejected drafts are simply overwritten later)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length

    def keep(self, start: int, slots) -> None:
        """Keep only ``slots`` (relative to ``start``) of the slots written after ``start``.

        Used after tree verification: the accepted path's keys/values are moved
        down to [start, start + len(slots)) in order; nothing is recomputed.
        Positions were baked into the keys (RoPE) or the embeddings (GPT-2) when
        they were written, so moving a slot does not change its meaning.
        """
        slots = [int(s) for s in slots]  # checked on the host: no device round trip
        if slots and (min(slots) < 0 or start + max(slots) >= self.length):
            raise ValueError("keep(): slot index outside the slots written after start")
        n = len(slots)
        if slots == list(range(n)):  # the accepted path is already in place (a chain, or nothing drafted)
            self.length = start + n
            return
        src = torch.tensor([start + s for s in slots], dtype=torch.long).to(self.k.device, non_blocking=True)
        # index_select copies, so overlapping source and destination ranges are safe
        self.kv[:, :, :, start:start + n] = self.kv.index_select(3, src)
        self.length = start + n


class Linear(nn.Linear):
    """nn.Linear with a row-block path for a few rows on the CPU.

    Decoding one token multiplies one row by every weight matrix, a matrix-vector
    product whose speed is set by memory bandwidth.  On some CPUs the BLAS runs
    that product at a fraction of the bandwidth (measured here: about 10 GB/s
    against 28 GB/s); cutting the weight into row blocks and feeding the rows as
    columns to a batched matmul streams the weights at full speed.  Results
    agree with nn.Linear to float rounding.

    Which path is faster depends on the CPU, the dtype and the number of rows, and not
    monotonically (one 2-core CPU: row blocks won up to 3 rows of fp32 and lost from 4; another:
    they won up to 24 rows of fp32 and lost at every row count in bf16).  ``ROW_BLOCK_ROWS`` says,
    per (device type, dtype), which row counts take the row-block path;
    ``measure.roofline.choose_linear_paths`` times both paths in the model's own forward and sets
    it for this machine.  Before anything is measured: 1 to 16 rows of fp32 on a CPU.
    """

    ROW_BLOCKS = 4
    ROW_BLOCK_ROWS: dict = {("cpu", torch.float32): frozenset(range(1, 17))}

    def forward(self, x):
        return linear(x, self.weight, self.bias)


def linear(x, weight, bias=None):
    """F.linear, or the row-block path where ``Linear.ROW_BLOCK_ROWS`` says it is faster (see ``Linear``)."""
    out_features, in_features = weight.shape
    rows = x.numel() // in_features
    c = Linear.ROW_BLOCKS
    if (rows in Linear.ROW_BLOCK_ROWS.get((x.device.type, x.dtype), ()) and out_features % c == 0
            and not torch.is_grad_enabled()):
        w = weight.view(c, out_features // c, in_features)  # (c, out/c, in)
        # x's rows as columns, the same for every block: one strided view of a row-major x (what
        # reshape, t and expand would give, in one operator).  The column layout matters: strides
        # (0, 1, in) are the fast case.
        columns = x.contiguous().as_strided((c, in_features, rows), (0, 1, in_features))  # (c, in, rows)
        y = torch.bmm(w, columns)  # (c, out/c, rows)
        if rows == 1:  # one token: (c, out/c, 1) is already in the output's order
            y = y.view(*x.shape[:-1], out_features)
        else:
            y = y.permute(2, 0, 1).reshape(*x.shape[:-1], out_features).contiguous()
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if x.is_cuda and hasattr(F, "rms_norm"):  # one fused kernel (torch >= 2.4) instead of six
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        if x.dtype == torch.float32:  # (on a CPU, F.rms_norm decomposes into more operators than this)
            # mean(x^2) + eps as |x|^2 / d + eps: one reduction and one multiply-add.  eps is a tensor: on
            # the CPU every Python number in an operation costs a conversion (four more operators)
            eps = torch.scalar_tensor(self.eps, dtype=x.dtype, device=x.device)
            norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (B, N, 1)
            return x * torch.rsqrt(torch.addcmul(eps, norm, norm, value=1 / x.shape[-1])) * self.weight
        # normalise in fp32 for stability, as the reference implementation does
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(head_dim: int, max_len: int, theta: float):
    """cos and signed sin tables of shape (max_len, head_dim) for rotary embeddings (half-split layout).

    The sin table's first half is negated, so that the rotation is one product with the halves
    swapped (``apply_rope``): fewer operators, and kernels on a GPU, than negating x each time."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (S, hs/2)
    sin = angles.sin()
    return torch.cat([angles, angles], dim=-1).cos(), torch.cat([-sin, sin], dim=-1)  # (S, hs) each


def apply_rope(x, cos, signed_sin):
    """Rotate x (B, N, h, 2, hs/2), each head split into its two halves, by its positions' angles;
    cos/signed_sin are tables of the same layout (``head_rope``).

    Pairs (x1, x2) = (x[i], x[i + hs/2]) turn by their angle: (x1 cos - x2 sin, x2 cos + x1 sin).
    ``flip`` swaps the halves and the signed sin supplies the minus."""
    return torch.addcmul(x * cos, x.flip(-2), signed_sin)


def head_rope(cos, signed_sin, n_rotated: int, n_plain: int):
    """The tables of ``apply_rope`` for a layer's fused qkv heads: (B, N, n_rotated + n_plain, 2, hs/2)
    from the (B, N, 1, hs) rows of ``rope_tables``.

    The first n_rotated heads (q and k) turn by their angles, the last n_plain (v) by angle zero
    (cos 1, sin 0, exactly v again): then one rotation covers the projection's whole output, and no
    layer slices q and k out of it first.  Made once per forward; every layer uses the same."""
    B, N, _, hs = cos.shape
    cos = torch.cat([cos.expand(B, N, n_rotated, hs), torch.ones_like(cos).expand(B, N, n_plain, hs)], dim=2)
    sin = torch.cat([signed_sin.expand(B, N, n_rotated, hs), torch.zeros_like(signed_sin).expand(B, N, n_plain, hs)],
                    dim=2)
    return cos.view(B, N, -1, 2, hs // 2), sin.view(B, N, -1, 2, hs // 2)


def attention(q, k, v, mask):
    """Softmax attention, q (B, nh, N, hs) over k, v (B, nkv, S, hs); each kv head serves nh / nkv query heads.

    mask: None, boolean (True = may attend) or additive (0 or -inf, ``additive_mask``), (N, S) or (B, 1, N, S).

    On the CPU in 16-bit, PyTorch's fused kernel is many times slower than three plain ops
    (measured: about 10 ms against 0.6 ms for one layer of a 48-sequence decoding step), so
    that case takes the explicit path, with the softmax in fp32.  Elsewhere the fused kernel
    handles grouped-query attention without copying k and v.
    """
    B, nh, N, hs = q.shape
    nkv, S = k.shape[1], k.shape[2]
    if q.device.type == "cpu" and q.dtype != torch.float32:
        g = nh // nkv
        scores = (q.reshape(B, nkv, g * N, hs) @ k.transpose(-1, -2)).float() / math.sqrt(hs)  # (B, nkv, g*N, S)
        if mask is not None:
            m = mask if mask.dim() == 2 else mask[:, 0]  # (N, S) or (B, N, S)
            m = m[:, None, None] if m.dim() == 3 else m  # broadcasts over (B, nkv, g, N, S)
            scores = scores.view(B, nkv, g, N, S)
            # a boolean mask (True = may attend) or an additive one (0 or -inf, ``additive_mask``)
            scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m
            scores = scores.view(B, nkv, g * N, S)
        return (torch.softmax(scores, -1).to(v.dtype) @ v).view(B, nh, N, hs)
    if nkv != nh:
        try:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        except TypeError:  # torch < 2.5: no enable_gqa
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def additive_mask(mask, dtype):
    """A boolean mask (True = may attend) as the additive one attention applies: 0 or -inf.

    ``scaled_dot_product_attention`` converts a boolean mask so in every call; done once per forward,
    the layers share it."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        bias = config.family == "gpt2"
        # q, k and v in one matmul: one weight read instead of three
        self.qkv = Linear(config.d_model, (config.n_head + 2 * config.n_kv_head) * self.head_dim, bias=bias)
        self.out = Linear(config.d_model, config.d_model, bias=bias)

    def forward(self, x, rope, cache: Optional[KVCache], start: int, mask):
        """rope: the tables of ``head_rope`` (or (B, N, 1, hs) rows of ``rope_tables``, widened here)."""
        B, N, _ = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        H = nh + 2 * nkv  # q, k and v heads, in this order
        qkv = self.qkv(x)  # (B, N, H * hs)
        if rope is not None:  # q and k rotated together, v by angle zero: one rotation, no slicing
            if rope[0].dim() == 4:
                rope = head_rope(*rope, nh + nkv, nkv)
            qkv = apply_rope(qkv.view(B, N, H, 2, hs // 2), *rope)  # (B, N, H, 2, hs/2)
        qkv = qkv.view(B, N, H, hs).transpose(1, 2)  # (B, H, N, hs)
        q, kv = qkv.split([nh, 2 * nkv], dim=1)  # (B, nh, N, hs), (B, 2 nkv, N, hs)
        if cache is not None:
            kv = cache.write(self.layer_idx, start, kv)  # (B, 2 nkv, start + N, hs): k and v in one write
        k, v = kv.split([nkv, nkv], dim=1)  # (B, nkv, S, hs) each
        y = attention(q, k, v, mask)  # (B, nh, N, hs)
        return self.out(y.transpose(1, 2).reshape(B, N, nh * hs))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gated = config.family == "llama"
        self.d_ff = config.d_ff
        if self.gated:  # SwiGLU: gate and up projections fused into one matmul
            self.up = Linear(config.d_model, 2 * config.d_ff, bias=False)
            self.down = Linear(config.d_ff, config.d_model, bias=False)
        else:
            self.up = Linear(config.d_model, config.d_ff)
            self.down = Linear(config.d_ff, config.d_model)

    def forward(self, x):
        if self.gated:
            gate, up = self.up(x).split([self.d_ff, self.d_ff], dim=-1)  # (B, N, d_ff) each
            return self.down(F.silu(gate) * up)
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        Norm = (lambda d: RMSNorm(d, config.norm_eps)) if config.family == "llama" \
            else (lambda d: nn.LayerNorm(d, eps=config.norm_eps))
        self.norm1 = Norm(config.d_model)
        self.attn = Attention(config, layer_idx)
        self.norm2 = Norm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x, rope, cache, start, mask):
        x = x + self.attn(self.norm1(x), rope, cache, start, mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.max_seq_len, c.d_model) if c.family == "gpt2" else None
        self.blocks = nn.ModuleList(Block(c, i) for i in range(c.n_layer))
        self.norm = RMSNorm(c.d_model, c.norm_eps) if c.family == "llama" else nn.LayerNorm(c.d_model, eps=c.norm_eps)
        if c.head_size:
            self.head = None
            self.register_buffer("head_ids", torch.arange(c.head_size))  # full-vocabulary id of each head row
            self._head_cache = None
        else:
            self.head = Linear(c.d_model, c.vocab_size, bias=False)
            if c.tie_embeddings:
                self.head.weight = self.tok_emb.weight
        if c.family == "llama":
            cos, sin = rope_tables(c.head_dim, c.max_seq_len, c.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def device(self):
        return self.tok_emb.weight.device

    @property
    def dtype(self):
        return self.tok_emb.weight.dtype

    def new_cache(self, max_len: int, batch_size: int = 1) -> KVCache:
        """A KV cache for ``max_len`` tokens (the fast path's fixed-shape one: ``fast.new_cache``)."""
        if max_len > self.config.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds the model's context ({self.config.max_seq_len})")
        return KVCache(self.config, max_len, batch_size, self.device, self.dtype)

    def forward(self, input_ids: torch.Tensor, cache: Optional[KVCache] = None,
                position_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                last_only: bool = False, reduced: bool = False,
                extra_head_ids: Optional[torch.Tensor] = None, features: bool = False):
        """Logits (B, N, V) in float32 for N new tokens (B, N).

        position_ids: (B, N) or (N,); default: the next N positions after the cache.
        attention_mask: bool (N, S) or (B, N, S) over S = cached slots + N new slots,
            True = may attend.  Default: causal.
        last_only: compute logits for the last token only (prefill needs no more).
        reduced: with a reduced head, return its (B, N, head_size) logits instead (training uses them).
        extra_head_ids: with ``reduced``, also score these token ids, appended after the head's columns:
            the head extended at run time (a drafter adds the tokens of the prompt), from the tied embedding.
        features: return (logits, h), h the normalised hidden states (B, N, d) of every new token, what the
            head reads (a feature draft, ``sdd_edu.feature_draft``, drafts from them); ``last_only`` then limits
            the logits alone.  The fast path returns them too: they are its captured forward's output.
        """
        B, N = input_ids.shape
        if getattr(cache, "static", False) and N <= cache.max_bucket:  # the fast path (sdd_edu/fast.py)
            return cache.forward(self, input_ids, position_ids, attention_mask, last_only, reduced, extra_head_ids,
                                 features)
        if features:
            h = self._hidden(input_ids, cache, position_ids, attention_mask)
            return self.head_logits(h[:, -1:] if last_only else h, reduced, extra_head_ids), h
        return self.head_logits(self._hidden(input_ids, cache, position_ids, attention_mask, last_only),
                                reduced, extra_head_ids)

    def _hidden(self, input_ids, cache, position_ids, attention_mask, last_only: bool = False) -> torch.Tensor:
        """The eager forward up to the head: checks, positions and mask, ``body``, the cache advanced."""
        B, N = input_ids.shape
        start = cache.length if cache is not None else 0
        if cache is not None and start + N > cache.max_len:
            raise ValueError(f"KV cache full: {start} + {N} > {cache.max_len} slots")
        if position_ids is None:
            position_ids = torch.arange(start, start + N, device=input_ids.device)
        position_ids = position_ids.expand(B, N)
        if int(position_ids.max()) >= self.config.max_seq_len:
            raise ValueError(f"position {int(position_ids.max())} is past the model's context "
                             f"of {self.config.max_seq_len} tokens")
        mask = self._attention_mask(attention_mask, start, N, input_ids.device)
        x = self.body(input_ids, position_ids, cache, start, mask, last_only)
        if cache is not None:
            cache.length = start + N
        return x

    def body(self, input_ids, position_ids, cache, start, mask, last_only: bool = False) -> torch.Tensor:
        """The normalised hidden states (B, N, d) of the final layer: embeddings, blocks, final norm.

        ``start`` is where the cache writes begin, or (the fast path) a tensor of N slot indices, with
        ``mask`` then covering every slot of the cache.  Nothing here reads a device value back to the
        host, so the fast path can capture it in a CUDA graph."""
        x = self.tok_emb(input_ids)  # (B, N, d)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(position_ids)
        else:  # the rotation tables of this forward's positions, made once for every layer
            c = self.config
            rope = head_rope(self.rope_cos[position_ids].unsqueeze(2).to(x.dtype),  # (B, N, 1, hs)
                             self.rope_sin[position_ids].unsqueeze(2).to(x.dtype), c.n_head + c.n_kv_head, c.n_kv_head)
        if mask is not None and mask.dtype == torch.bool:
            mask = additive_mask(mask, x.dtype)
        for block in self.blocks:
            x = block(x, rope, cache, start, mask)
        if last_only:
            x = x[:, -1:]
        return self.norm(x)

    def head_logits(self, h, reduced: bool = False, extra_head_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits from the normalised hidden states h (B, N, d): (B, N, V) in float32, or with ``reduced``
        the reduced head's columns, then the columns of ``extra_head_ids``."""
        if not self.config.head_size:
            return self.head(h).float()
        small = linear(h, self._reduced_head_weight())  # (B, N, head_size)
        if reduced:
            if extra_head_ids is not None and extra_head_ids.numel():
                extra = linear(h, self.tok_emb.weight.index_select(0, extra_head_ids))  # (B, N, extra)
                small = torch.cat([small, extra], dim=-1)
            return small
        logits = torch.full((*h.shape[:-1], self.config.vocab_size), float("-inf"), device=h.device)
        logits[..., self.head_ids] = small.float()  # zero probability outside the head
        return logits

    def _reduced_head_weight(self):
        w = self.tok_emb.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return w.index_select(0, self.head_ids)
        # frozen weights: gather the rows once (weights made in inference mode keep no version: never change)
        key = (w.data_ptr(), 0 if w.is_inference() else w._version, w.dtype)
        if self._head_cache is None or self._head_cache[0] != key:
            self._head_cache = (key, w.index_select(0, self.head_ids).contiguous())
        return self._head_cache[1]

    @staticmethod
    def _attention_mask(attention_mask, start, N, device):
        if attention_mask is not None:
            m = attention_mask.to(device=device, dtype=torch.bool)
            if m.shape[-2:] != (N, start + N):
                raise ValueError(f"attention mask must be (N, S) = ({N}, {start + N}), got {tuple(m.shape)}")
            return m.unsqueeze(-3) if m.dim() == 3 else m  # broadcast over heads
        if N == 1:
            return None  # one new token may see everything before it
        # causal over the new tokens, full view of the cache: slot j visible to query i iff j <= start + i
        slots = torch.arange(start + N, device=device)
        return slots[None, :] <= (start + torch.arange(N, device=device))[:, None]  # (N, S)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
