"""The decoding loops of the device path: one read from the device per step (or per few tokens).

``speculative_decode`` in ``sdd_edu/decoding/speculative.py`` is the readable loop; this one runs the
same steps with the tree, the walk and the commit on the device (``drafter.py``, ``verify.py``), and
reads back once per step what the host needs: how many tokens were accepted and which (for the
result, streaming, EOS and the schedule).  ``baseline_decode`` keeps each sampled token on the device
and feeds it to the next forward; the host reads the tokens every ``READ_EVERY`` steps (each step
with a stream callback, which wants every token at once).

Both run on the fast path's fixed-shape caches (``sdd_edu/fast.py``): on a GPU every forward is
replayed from a CUDA graph, on a CPU the same code runs eagerly.  Timing never waits on the device
inside a step: on CUDA each phase is bracketed by events, read when the generation ends.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch

from ...fast import CAPACITY_STEP, static_cache
from ...loading import LoadedModel
from ...sampling import Sampling, probabilities
from ..baseline import new_stats
from ..common import ORIGINS, GenerationResult, StreamCallback, check_lengths, synchronize
from ..drafters import ModelDrafter
from ..schedule import DraftSchedule
from ..speculative import emit, learn
from .capture import READS, host_read
from .drafter import DeviceDrafter, DraftedStep, untimed
from .graphs import StepGraphs
from .trees import Uniforms, pick, tree_mask_rows
from .verify import _gumbel_sample, greedy_walk, keep_path, sampled_walk

READ_EVERY = 8  # baseline: tokens generated between reads (without a stream callback)
BUCKET_SLACK = 2  # draft cache slots beyond the context and a step's window


class PhaseClock:
    """Seconds spent in named phases, per step, without waiting for the device inside a step.

    On CUDA each phase is a pair of events, resolved once at the end (``finish``); elsewhere the host's
    clock (a CPU computes what it launches; MPS is synchronised around each phase)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.step = 0
        self.pending: list[tuple[int, str, object, object]] = []
        self.per_step: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    @contextmanager
    def __call__(self, name: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.pending.append((self.step, name, start, end))
            return
        synchronize(self.device)
        t0 = time.perf_counter()
        yield
        synchronize(self.device)
        self.per_step[self.step][name] += time.perf_counter() - t0

    def finish(self) -> None:
        synchronize(self.device)
        for step, name, start, end in self.pending:
            self.per_step[step][name] += start.elapsed_time(end) / 1000
        self.pending = []

    def total(self, name: str) -> float:
        return sum(s.get(name, 0.0) for s in self.per_step.values())


def _device_generator(sampling: Sampling, device) -> Optional[Uniforms]:
    """The draws of a sampled generation, from a generator on the device (seeded like ``Sampling.generator``)."""
    if sampling.greedy:
        return None
    g = torch.Generator(device=device)
    if sampling.seed is not None:
        g.manual_seed(int(sampling.seed))
    else:
        g.seed()
    return Uniforms(g)


def _next_token(logits: torch.Tensor, sampling: Sampling, generator) -> torch.Tensor:
    """The target's token from one row of logits, on the device: argmax, or a draw (Gumbel-max)."""
    if sampling.greedy:
        return logits.argmax(-1)
    return _gumbel_sample(probabilities(logits, sampling), generator)


@torch.inference_mode()
def baseline_decode(target: LoadedModel, prompt_ids: list[int], max_new_tokens: int = 128,
                    sampling: Sampling = Sampling(), stream: StreamCallback = None,
                    stop_at_eos: bool = True) -> GenerationResult:
    """``decoding.baseline.baseline_decode`` with the tokens kept on the device between reads."""
    model = target.model
    check_lengths(prompt_ids, max_new_tokens, model.config.max_seq_len)
    stats = new_stats("baseline", target, len(prompt_ids))
    clock = PhaseClock(target.device)
    generator = _device_generator(sampling, target.device)
    eos = target.eos_token_id if stop_at_eos else None
    dev = model.device

    synchronize(target.device)
    t_start = time.perf_counter()
    cache = static_cache(model, len(prompt_ids) + max_new_tokens)
    with clock("target"):
        logits = model(torch.tensor([prompt_ids], device=dev), cache, last_only=True)[0, -1]
    stats.prefill_seconds = time.perf_counter() - t_start
    reads, waited = READS.count, READS.seconds
    total = cache.kv.shape[3]
    slot = torch.arange(total, device=dev)
    tokens = torch.zeros(max_new_tokens, dtype=torch.long, device=dev)
    out: list[int] = []
    L = len(prompt_ids)
    every = 1 if stream else READ_EVERY
    stats.finish_reason = "length"
    while len(out) < max_new_tokens:
        chunk = min(every, max_new_tokens - len(out))
        for i in range(chunk):
            n = len(out) + i
            tokens[n] = _next_token(logits, sampling, generator)
            if n + 1 < max_new_tokens:  # the next forward reads the token where it lies
                clock.step = n
                with clock("target"):
                    logits = cache.forward_rows(model, tokens[n:n + 1], slot[L:L + 1], slot[L:L + 1],
                                                (slot <= L)[None])[0]
                stats.target_forwards += 1
                L += 1
        new = host_read(tokens[len(out):len(out) + chunk])
        if eos is not None and eos in new:
            new = new[:new.index(eos) + 1]
            stats.finish_reason = "eos"
        out += new
        if stream:
            stream(new)
        if stats.finish_reason == "eos":
            break
    cache.length = L
    stats.device_reads, stats.read_wait_seconds = READS.count - reads, READS.seconds - waited
    clock.finish()
    synchronize(target.device)
    stats.wall_seconds = time.perf_counter() - t_start
    stats.new_tokens = len(out)
    stats.target_seconds = clock.total("target")
    trace = [{"proposed": 0, "accepted": 0, "emitted": 1} for _ in out]
    return GenerationResult(target.decode(out), out, list(prompt_ids), ["target"] * len(out), stats, trace)


class _TargetStep:
    """The target's side of a step: the forward over the root and the tree, the walk, the commit."""

    def __init__(self, target: LoadedModel, capacity: int, sampling: Sampling, rule: str, generator):
        self.model = target.model
        self.cache = static_cache(self.model, capacity)
        self.sampling, self.rule, self.generator = sampling, rule, generator
        self.slot = torch.arange(self.cache.kv.shape[3], device=self.model.device)

    def forward(self, ctx: torch.Tensor, length: torch.Tensor, step: Optional[DraftedStep], depth: int):
        """Logits (1 + B, V) of the root (the context's last token) and the tree's nodes."""
        dev, slot = self.model.device, self.slot
        root = pick(ctx, length - 1).view(1)
        if step is None:
            return self.cache.forward_rows(self.model, root, (length - 1).view(1), (length - 1).view(1),
                                           (slot < length)[None])
        tree = step.tree
        B = len(tree)
        window = tree_mask_rows(tree.anc, tree.valid)
        nodes = DeviceDrafter._place(window, length, slot.shape[0]) | (tree.valid[:, None] & (slot[None, :] < length))
        mask = torch.cat([(slot < length)[None], nodes])
        ids = torch.cat([root, tree.tokens])
        pos = torch.cat([(length - 1).view(1), length - 1 + tree.depth])
        slots = length - 1 + torch.arange(1 + B, device=dev)
        return self.cache.forward_rows(self.model, ids, pos, slots, mask)

    def walk(self, logits: torch.Tensor, step: Optional[DraftedStep], drafter: DeviceDrafter, depth: int, draws):
        """(path (depth,), accepted count, next token, tested levels), all on the device."""
        dev = logits.device
        if step is None:
            zero = torch.zeros((), dtype=torch.long, device=dev)
            nxt = _next_token(logits[0], self.sampling, draws)
            return torch.full((max(depth, 1),), -1, dtype=torch.long, device=dev), zero, nxt, zero
        if self.sampling.greedy:
            v = greedy_walk(step.tree, logits, depth)
        else:
            p = probabilities(logits, self.sampling)  # (1 + B, V)
            V = p.shape[1]
            # the draft's distributions in the whole vocabulary (columns not given a token yet: a spare entry)
            q = torch.zeros(step.rows.shape[0], V + 1, dtype=step.rows.dtype, device=dev)
            support = torch.where(drafter.support < V, drafter.support, V)
            q.scatter_(1, support[None].expand_as(step.rows), step.rows)
            v = sampled_walk(step.tree, p, q[:, :V], drafter.width, depth, draws, self.rule)
        return v.path, v.count, v.next_token, v.tested

    def commit(self, length: torch.Tensor, path: torch.Tensor) -> None:
        """Keep the root and the accepted path in the target's cache (``KVCache.keep`` by index)."""
        offsets = torch.cat([torch.zeros(1, dtype=torch.long, device=path.device), 1 + path.clamp(min=0)])
        keep_path(self.cache.kv, length - 1, offsets)


def verify_and_commit(target_step: _TargetStep, drafter: DeviceDrafter, logits: torch.Tensor, ctx: torch.Tensor,
                      length: torch.Tensor, drafted: Optional[DraftedStep], shadow: bool, depth: int, T: int,
                      keep_trees: bool, draws=None):
    """The rest of a step after the target's forward, on the device: the walk, the target's and the draft's
    caches kept, the new tokens appended to the context, prompt lookup scored, the draft's head extended.

    Returns what the host reads (one tensor: count, next token, tested levels, draft keys kept, lookup's
    guess, the shadow draft's token, then the accepted path's tokens, origins and nodes, then the tree if
    ``keep_trees``), the new length, and the path's length D."""
    dev = ctx.device
    verified = None if shadow else drafted
    path, count, next_token, tested = target_step.walk(logits, verified, drafter, depth,
                                                       target_step.generator if draws is None else draws)
    D = path.shape[0]
    if verified is not None:
        target_step.commit(length, path)
        tree = verified.tree
        path_tokens = torch.where(path >= 0, tree.tokens[path.clamp(min=0)], 0)
        path_origins = torch.where(path >= 0, tree.origin[path.clamp(min=0)], 0)
    else:
        path_tokens = path_origins = torch.zeros(D, dtype=torch.long, device=dev)
    i = torch.arange(D + 1, device=dev)
    new = torch.where(i < count, torch.cat([path_tokens, path_tokens[:1]]), next_token)
    ctx.scatter_(0, length + i, new)
    # the draft keeps what it computed of the accepted path (after a shadow draft: only the context it read)
    if verified is not None:
        kept = drafter.commit(drafted, path, count, length)
    else:
        kept = torch.zeros((), dtype=torch.long, device=dev)
        if shadow:
            drafter.read_context(length)
    landed = drafter.score_lookup(ctx[:T + D + 1], length, D + 1, count + 1)
    drafter.extend(new, valid=i <= count)
    minus_one = torch.full((), -1, dtype=torch.long, device=dev)
    shadow_token = torch.where(drafted.tree.valid[0], drafted.tree.tokens[0], -1) if shadow else minus_one
    parts = [torch.stack([count, next_token, tested, kept, landed, shadow_token]), path_tokens, path_origins, path]
    if keep_trees and verified is not None:
        t = verified.tree
        parts += [t.tokens, t.parents, t.origin, t.valid.long(), t.probs.float().view(torch.int32).long()]
    length.add_(count + 1)  # in place: the same tensor at every step (a graph replays its address)
    return torch.cat(parts), length, D


class _Session:
    """What a device generation keeps for the next one with the same settings: the drafter's and the
    target's state buffers, the context buffer and its length, and the phase graphs recorded on them (a
    graph replays fixed addresses, so the buffers outlive a generation, as the fast caches do)."""

    def __init__(self, target: LoadedModel, drafter: ModelDrafter, capacity: int, sampling: Sampling, rule: str,
                 draws):
        dev = target.model.device
        self.drafter = DeviceDrafter(drafter)
        biggest = self.drafter.shape(drafter.max_size)
        self.B_max, self.D_max = biggest["budget"], max(biggest["depth"], 1)
        self.draft_capacity = min(capacity + biggest["window"] + BUCKET_SLACK, drafter.draft.config.max_seq_len)
        self.target_step = _TargetStep(target, capacity + self.B_max + 1, sampling, rule, draws)
        self.ctx = torch.zeros(capacity + self.D_max + 2, dtype=torch.long, device=dev)  # a step writes depth + 1
        self.length = torch.zeros((), dtype=torch.long, device=dev)
        self.graphs = StepGraphs(dev, [self.target_step.cache], draws)

    @staticmethod
    def key(target, drafter: ModelDrafter, capacity: int, sampling: Sampling, rule: str, keep_trees: bool):
        settings = (drafter.width, drafter.depth, drafter.budget, drafter.beam, drafter.rounds, drafter.fanout,
                    drafter.max_size, id(drafter.ngram), None if drafter.lookup is None else
                    (drafter.lookup.max_ngram, drafter.lookup.min_ngram))
        return (id(drafter.draft.model), settings, capacity, (sampling.temperature, sampling.top_k, sampling.top_p),
                rule, keep_trees)


def _session(target, drafter, capacity, sampling, rule, keep_trees, draws) -> _Session:
    sessions = target.model.__dict__.setdefault("_device_sessions", {})
    key = _Session.key(target, drafter, capacity, sampling, rule, keep_trees)
    session = sessions.get(key)
    if session is None:
        if len(sessions) >= 8:  # settings swept in a notebook: keep the memory bounded
            sessions.clear()
        session = sessions[key] = _Session(target, drafter, capacity, sampling, rule, draws)
    session.drafter.ref = drafter  # this generation's settings object (equal settings: the key)
    session.target_step.generator = session.graphs.draws = draws
    return session


@torch.inference_mode()
def speculative_decode(target: LoadedModel, drafter: ModelDrafter, prompt_ids: list[int], max_new_tokens: int = 128,
                       sampling: Sampling = Sampling(), method: str = "speculative", rule: str = "rrs",
                       stream: StreamCallback = None, stop_at_eos: bool = True, keep_trees: bool = True,
                       schedule: Optional[DraftSchedule] = None) -> GenerationResult:
    """``decoding.speculative.speculative_decode`` with every step on the device and one read per step."""
    model = target.model
    if schedule is None:
        schedule = DraftSchedule(drafter.budget, drafter.budget, adaptive=False)
    drafter.max_size = schedule.max_size
    biggest = DeviceDrafter(drafter).shape(schedule.max_size)
    extra = biggest["budget"] + 1
    context = min(model.config.max_seq_len,
                  drafter.draft.config.max_seq_len - biggest["window"] - BUCKET_SLACK + extra)
    check_lengths(prompt_ids, max_new_tokens, context, extra=extra)
    stats = new_stats(method, target, len(prompt_ids))
    clock = PhaseClock(target.device)
    draws = _device_generator(sampling, target.device)
    eos = target.eos_token_id if stop_at_eos else None

    synchronize(target.device)
    t_start = time.perf_counter()
    longest = len(prompt_ids) + max_new_tokens
    capacity = -(-longest // CAPACITY_STEP) * CAPACITY_STEP  # shared by generations of about this length
    session = _session(target, drafter, capacity, sampling, rule, keep_trees, draws)
    device_drafter, target_step, graphs = session.drafter, session.target_step, session.graphs
    ctx, length, D_max = session.ctx, session.length, session.D_max
    # timed phase by phase inside the draft phase, unless it is replayed whole from a graph
    device_drafter.clock = untimed if graphs.enabled else clock
    device_drafter.begin(prompt_ids, max_new_tokens, session.draft_capacity)
    graphs.caches = [target_step.cache, device_drafter.cache]  # their forwards are recorded inline
    graphs.state = [ctx, length, target_step.cache.kv, *device_drafter.state()]
    ctx[:len(prompt_ids)] = torch.tensor(prompt_ids, device=model.device)
    length.fill_(len(prompt_ids))
    if len(prompt_ids) > 1:  # the target cache holds everything but the root
        with clock("target"):
            target_step.cache.length = 0
            model(ctx[None, :len(prompt_ids) - 1], target_step.cache, last_only=True)
    if schedule.adaptive:
        with clock("draft"):
            schedule.record_prompt(device_drafter.prefill(list(prompt_ids)))
    stats.prefill_seconds = time.perf_counter() - t_start
    reads, waited = READS.count, READS.seconds

    context_ids = list(prompt_ids)
    out: list[int] = []
    origins: list[str] = []
    trace: list[dict] = []
    stats.finish_reason = "length"
    while len(out) < max_new_tokens:
        step_start = time.perf_counter()
        clock.step = len(trace)
        forwards_before = device_drafter.forwards
        size = schedule.size()
        shadow = size == 0 and schedule.shadow_due()
        draft_size = 1 if shadow else size
        L = len(context_ids)
        # the context window the lookup reads: the whole buffer where shapes must stay fixed (CUDA graphs)
        T = ctx.shape[0] if graphs.enabled else min(ctx.shape[0], -(-(L + D_max + 1) // 64) * 64)
        view = ctx[:T]
        depth = device_drafter.shape(draft_size)["depth"] if draft_size else 1
        Pb = device_drafter.prepare(view, L) if draft_size else 0
        if draft_size:
            device_drafter.forwards += 1 + device_drafter.shape(draft_size)["rounds"]
        phases = _phases(device_drafter, target_step, view, ctx, length, draft_size, Pb, shadow, depth, T,
                         keep_trees, sampling)
        outputs = graphs.run((draft_size, Pb, shadow), phases, clock)
        stats.target_forwards += 1
        drafted = outputs[0][0] if draft_size else None
        verified = None if shadow else drafted
        packed, D = outputs[-1]
        values = host_read(packed)  # the step's one wait for the device
        count_, next_, tested_, kept_, landed_, shadow_ = values[:6]
        accepted_tokens = values[6:6 + count_]
        accepted_origins = [ORIGINS[o] for o in values[6 + D:6 + D + count_]]
        if verified is not None or shadow:
            device_drafter.committed_after(L, kept_, verified is not None)
        new_tokens = accepted_tokens + [next_]
        new_origins = accepted_origins + ["target"]
        record = {"size": size, "shadow": shadow, "proposed": 0, "accepted": count_, "tested": tested_,
                  "emitted": len(new_tokens), "depth": 0, "draft_forwards": device_drafter.forwards - forwards_before}
        if keep_trees and verified is not None:
            B = len(verified.tree)
            rest = values[6 + 3 * D:]
            tok, par, org, ok, bits = (rest[k * B:(k + 1) * B] for k in range(5))
            n = sum(ok)
            probs = np.asarray(bits[:n], dtype=np.int64).astype(np.int32).view(np.float32).tolist()
            record["tree"] = {"tokens": tok[:n], "parents": par[:n], "origins": [ORIGINS[o] for o in org[:n]],
                              "draft_probs": [round(p, 4) for p in probs]}
            record["accepted_nodes"] = values[6 + 2 * D:6 + 2 * D + count_]
            record["proposed"] = n
            record["depth"] = _max_depth(par[:n])
        trace.append(record)
        emit(new_tokens, new_origins, out, origins, max_new_tokens, eos, stats, stream)
        if stats.finish_reason == "eos":
            break
        context_ids += accepted_tokens + [next_]
        learn(schedule, size, shadow, count_, tested_, time.perf_counter() - step_start, shadow_ == next_,
              bool(landed_) if landed_ >= 0 else None)
    stats.device_reads, stats.read_wait_seconds = READS.count - reads, READS.seconds - waited
    stats.graph_replays, stats.graph_failure = graphs.replays, graphs.failed
    clock.finish()
    synchronize(target.device)
    stats.wall_seconds = time.perf_counter() - t_start
    stats.new_tokens = len(out)
    stats.target_seconds = clock.total("target")
    stats.draft_forwards = device_drafter.forwards
    # the draft's forwards (the prompt's and catch-ups too); where the phases are replayed from graphs,
    # the whole draft phase, which one graph holds
    drafting = ("draft", "draft phase") if graphs.enabled else ("draft",)
    stats.draft_seconds = sum(clock.total(name) for name in drafting)
    stats.ngram_seconds = clock.total("ngram")
    for k, record in enumerate(trace):
        record["draft_seconds"] = sum(clock.per_step.get(k, {}).get(name, 0.0) for name in drafting)
    return GenerationResult(target.decode(out), out, list(prompt_ids), origins, stats, trace)





def _phases(drafter: DeviceDrafter, target_step: _TargetStep, view, ctx, length, draft_size: int, Pb: int,
            shadow: bool, depth: int, T: int, keep_trees: bool, sampling: Sampling) -> list:
    """A step as its phases, each ``fn(draws, *outputs of the phase before)`` (``graphs.StepGraphs``)."""
    def draft_phase(draws):
        return (drafter.draft_phase(view, length, draft_size, Pb, sampling, draws),)

    def target_phase(draws, drafted=None):
        return drafted, target_step.forward(ctx, length, None if shadow else drafted, depth)

    def verify_phase(draws, drafted, logits):
        packed, _, D = verify_and_commit(target_step, drafter, logits, ctx, length, drafted, shadow, depth, T,
                                         keep_trees, draws)
        return packed, D

    phases = [("draft phase", draft_phase)] if draft_size else []
    return phases + [("target", target_phase), ("verify phase", verify_phase)]


def _max_depth(parents: list[int]) -> int:
    depth: list[int] = []
    for p in parents:
        depth.append(1 if p < 0 else depth[p] + 1)
    return max(depth, default=0)
