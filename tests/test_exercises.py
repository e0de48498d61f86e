"""An exercise's checks reject plausible wrong answers (mutants), not only the unsolved stub.

Each case runs an exercise's cell with its solution block replaced, then the check cell after it, in a
namespace set up with cheap stand-ins for what the notebook computed before (no model is loaded):
the solution passes, the stub fails, and every mutant fails its checks.  The student edition's cells run
too: the stub gives sdd-edu's answer (``sdd_edu.course``), so that the cell and the checks' computations
work, while the check cell's ``solved`` line says the exercise is unsolved until the solution is in.
"""

import dataclasses
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

from sdd_edu.grade import HIDDEN, hidden_results
from sdd_edu.notebook import solution_blocks, student_edition

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"


@dataclass
class Exercise:
    notebook: str
    hint: str  # a phrase of the solution block's hint: which exercise
    setup: str  # what the cell and its checks read, made cheaply
    mutants: dict = field(default_factory=dict)  # name -> code in place of the solution
    from_block: bool = False  # run the cell from its solution block on (the lines before need the models)


SETUP_02 = """
from sdd_edu.measure.roofline import forward_counts
from sdd_edu.model import ModelConfig
from sdd_edu.notebook import check
cfg = ModelConfig(family="llama", vocab_size=49152, n_layer=30, n_head=9, n_kv_head=3, d_model=576, d_ff=1536,
                  max_seq_len=8192)
d, hd, L = cfg.d_model, cfg.head_dim, cfg.n_layer
matmul_weights = L * (d * (cfg.n_head + 2 * cfg.n_kv_head) * hd + d * d + 3 * d * cfg.d_ff) + cfg.vocab_size * d
counts = forward_counts(cfg, tokens=1, context=0, dtype="fp32")
"""

SETUP_03 = """
import numpy as np
import torch
from sdd_edu.notebook import check, pick
p = torch.tensor([0.45, 0.25, 0.15, 0.10, 0.05])
q = torch.tensor([0.10, 0.40, 0.30, 0.05, 0.15])
beta = torch.minimum(p, q).sum()
"""

SETUP_05 = """
from types import SimpleNamespace
from sdd_edu.notebook import check
def run(forwards, tokens):
    trace = [{"draft_forwards": f} for f in forwards]
    return SimpleNamespace(trace=trace, token_ids=list(range(tokens)),
                           stats=SimpleNamespace(draft_forwards=sum(forwards), new_tokens=tokens))
tree_run, staged_run = run([4, 4, 3, 4, 2], 17), run([2, 1, 2, 2, 1, 2], 17)
"""

SETUP_07 = """
import torch
from sdd_edu.notebook import check
g = torch.Generator().manual_seed(5)
p = torch.softmax(torch.randn(200, generator=g, dtype=torch.float64) * 2, 0)
q = torch.softmax(torch.randn(200, generator=g, dtype=torch.float64) * 2, 0)
"""

SETUP_01 = """
import math
import torch
from sdd_edu.model import ModelConfig, Transformer
from sdd_edu.notebook import check
from sdd_edu.sampling import Sampling, probabilities
cfg = ModelConfig(family="llama", vocab_size=61, n_layer=3, n_head=6, n_kv_head=2, d_model=48, d_ff=64,
                  max_seq_len=4096)
model = Transformer(cfg)
first_logits = torch.randn(61, generator=torch.Generator().manual_seed(0)) * 3
"""

SETUP_02_CONTEXT = SETUP_02 + """
context = 2048
"""
BF16_BLOCK = """slots = {slots}
flops_bf16 = 2 * matmul_weights + {attention}
bytes_bf16 = {bytes} * (matmul_weights + 2 * L * d + 2 * d) + {bytes} * L * {pair} * {kv_heads} * hd * slots"""
RIGHT_BF16 = {"slots": "context + 1", "attention": "L * 2 * 2 * cfg.n_head * hd * slots", "bytes": "2", "pair": "2",
              "kv_heads": "cfg.n_kv_head"}

SETUP_02_SEARCH = SETUP_02 + """
from sdd_edu.measure.roofline import roofline_time
ceil = {"peak_flops": 2e11, "bandwidth_bytes": 2.5e10}
DTYPE, TARGET = "fp32", "target"
curves = {TARGET: [{"tokens": 1, "relative_to_one": 1.0}]}
"""

SETUP_03_FORMULAS = """
import torch
from sdd_edu.measure.acceptance import expected_tokens_per_forward
from sdd_edu.notebook import check
alpha, c = 0.7, 0.15
"""

SETUP_04 = """
import torch
from sdd_edu.decoding.tree import tree_attention_mask
from sdd_edu.notebook import check
parents, cached = [-1, -1, 0, 0, 2, 4], 3
mask, _ = tree_attention_mask(parents, cached=cached, chain=1)
def expected_accepted(parents, ranks, p):
    reach = []
    for parent, r in zip(parents, ranks):
        reach.append((1.0 if parent == -1 else reach[parent]) * p[r - 1])
    return sum(reach)
"""

SETUP_06 = """
from sdd_edu.notebook import check
greedy = {"staged": {"tokens_per_target_forward": 2.8, "tokens_per_second": 44.0, "time_split": {"target_seconds": 0.85}},
          "baseline": {"tokens_per_target_forward": 1.0, "tokens_per_second": 25.5, "time_split": {"target_seconds": 1.0}}}
"""

SETUP_06_GPU = """
from sdd_edu.measure.acceptance import expected_tokens_per_forward
from sdd_edu.notebook import check
def speedup(a, gamma=3, c=0.064, r=1.5):  # exercise 2's
    return expected_tokens_per_forward(a, gamma) / (gamma * c + r)
"""

H100_BLOCK = """cost = {cost}
gpu_break_even = next(a / 1000 for a in range(1001) if expected_tokens_per_forward(a / 1000, GAMMA_H100) >= cost)
gpu_predicted = {predicted}
host_share = {share}"""
RIGHT_H100 = dict(cost="GAMMA_H100 * C_H100 + 1", predicted="TOKENS_PER_FORWARD / cost",
                  share="1 - MEASURED_SPEEDUP / gpu_predicted")

WEIGHTS_BLOCK = """weight_read_ms = 1000 * PARAMETERS * {bytes} / BANDWIDTH
token_ms = 1000 / PAPER_BASELINE
weights_share = {share}"""
RIGHT_WEIGHTS = dict(bytes="2", share="weight_read_ms / token_ms")

SETUP_07_SHAPES = """
from sdd_edu.notebook import check
plan = {"rank_acceptance": [0.55, 0.2, 0.1, 0.03]}  # section 4's measurement
c, r = 0.3, {1: 1.0, 2: 1.2, 3: 1.5, 4: 1.9, 5: 2.4}  # r[n]: a target forward over n tokens, relative to one
"""

SHAPES_BLOCK = """p1, p2, p3 = p_rank
tokens_per_step = {{"chain": {own}p1 + p1 ** 2 + p1 ** 3, "fork": {own}p1 + p2 + p1 ** 2, "fan": {own}p1 + p2 + p3}}
step_cost = {{"chain": 3 * c + {verify}, "fork": {fork} * c + {verify}, "fan": {fan} * c + {verify}}}
best_shape = max(SHAPES, key=lambda shape: tokens_per_step[shape]{per_cost})"""
RIGHT_SHAPES = dict(own="1 + ", verify="r[4]", fork="2", fan="1", per_cost=" / step_cost[shape]")

SETUP_01_GQA = """
import math
import torch
from sdd_edu.model import attention
from sdd_edu.notebook import check
"""

SETUP_04_MASK = SETUP_04 + """
positions = tree_attention_mask([-1, 0, 0, -1, 3, 1], cached=3, chain=1)[1]  # exercise 2's, right
"""

SETUP_04_DEPTH = SETUP_04 + """
def tree_mask(parents, cached):  # exercise 1's, right
    return tree_attention_mask(parents, cached=cached, chain=1)[0]
"""

SETUP_05_KATZ = """
from collections import Counter
import numpy as np
from sdd_edu.ngram import KatzTrigram
from sdd_edu.notebook import check
rng = np.random.default_rng(0)
streams = [rng.choice(30, 60, p=np.arange(1, 31) / 465).tolist() for _ in range(60)]
stdlib = KatzTrigram.fit(streams, 30)
counts = Counter(t for s in streams for t in zip(s, s[1:], s[2:]))
d, k = stdlib.discounts[3], stdlib.max_discount_count
histories = Counter((x, y) for x, y, _ in counts)
def followers(h):
    return {w: r for (x, y, w), r in counts.items() if (x, y) == h}
# a history seen before some tokens, one of them more than k times (its count is not discounted)
a, b = next(h for h, n in histories.most_common() if 3 <= n < 12 and max(followers(h).values()) > k)
after = followers((a, b))
c_ab = sum(after.values())
target = type("Tokens", (), {"decode": staticmethod(lambda ids: " ".join(map(str, ids)))})()
"""

SETUP_00_STREAM = """
from types import SimpleNamespace
from sdd_edu.notebook import check, pick
DTYPE = "fp32"
def generate(*args, stream=None, **kwargs):  # batches as a speculative decoder emits them
    steps = [[5, 9, 2], [7], [1, 1], [4, 8, 8, 3]]
    for batch in steps:
        stream(list(batch))
    return SimpleNamespace(token_ids=sum(steps, []), stats=SimpleNamespace(target_forwards=len(steps)))
sdd_edu = SimpleNamespace(generate=generate)
"""

SETUP_00_PREDICT = """
from types import SimpleNamespace
from sdd_edu.notebook import check, pick
DTYPE = "fp32"
def generate(model, task, method, **kwargs):  # a method that saves forwards, and the baseline
    forwards = 4 if method == "baseline" else 2
    return SimpleNamespace(token_ids=[5, 9, 2, 7], stats=SimpleNamespace(target_forwards=forwards,
                                                                          summary=lambda: method))
sdd_edu = SimpleNamespace(generate=generate)
"""

SETUP_04_RRS = """
import torch
from sdd_edu.notebook import check, pick
"""

SETUP_04_WALK = """
import torch
from sdd_edu.decoding import baseline_decode
from sdd_edu.decoding.tree import ROOT, TokenTree, tree_attention_mask, verify
from sdd_edu.notebook import check
from sdd_edu.sampling import Sampling
from tests.test_speculative import random_lm
target = random_lm(7)  # a small random model stands in for the embedded target
context = [3, 14, 15, 9, 2]
greedy = baseline_decode(target, context, 3, stop_at_eos=False).token_ids
tree = TokenTree()
first = tree.add(greedy[0], ROOT)          # the target's own choice, then a wrong sibling
tree.add((greedy[0] + 1) % 61, ROOT)
second = tree.add(greedy[1], first)        # the path goes on below the right one
tree.add((greedy[2] + 5) % 61, second)     # and stops here
with torch.inference_mode():
    cache = target.model.new_cache(32)
    target.model(torch.tensor([context[:-1]]), cache)
    mask, pos = tree_attention_mask(tree.parents, cached=cache.length, chain=1)
    tree_logits = target.model(torch.tensor([[context[-1]] + tree.tokens]), cache, position_ids=pos,
                               attention_mask=mask)[0]
"""

SETUP_01_LOOP = SETUP_01 + """
from types import SimpleNamespace
from sdd_edu.decoding import baseline_decode
from sdd_edu.loading import LoadedModel
from sdd_edu.notebook import pick
torch.manual_seed(23)  # the same model whatever ran before: every mutant is judged on the same weights
model = Transformer(cfg)
with torch.no_grad():  # weights large enough that the greedy text does not repeat one token
    for w in model.parameters():
        w.mul_(3)
model.eval()
target = LoadedModel("tiny", model, None, "test")
prompt_ids = [5, 17, 33, 2, 40, 11, 8]
def generate(loaded, ids, max_new_tokens, stop_at_eos=True):  # the package's baseline, as sdd_edu.generate runs it
    out = baseline_decode(loaded, ids, max_new_tokens, stop_at_eos=stop_at_eos)
    return SimpleNamespace(token_ids=out.token_ids, text="", stats=SimpleNamespace(summary=lambda: ""))
sdd_edu = SimpleNamespace(generate=generate)
"""

LOOP_BLOCK = """cache = model.new_cache(len(prompt_ids) + n_new)
logits = model(torch.tensor([prompt_ids]), cache, last_only=True)[0, -1]
new = []
for _ in range(n_new):
    new.append(int({pick}))
    if len(new) < n_new:
        logits = {step}
return new"""
RIGHT_LOOP = {"pick": "logits.argmax()", "step": "model(torch.tensor([[new[-1]]]), cache)[0, -1]"}

SETUP_01_CACHE = SETUP_01 + """
from sdd_edu.model import attention
def gqa(q, k, v):  # exercise 2's, right
    return attention(q[None], k[None], v[None], None)[0]
prompt_ids, true_next = [5, 17, 33, 2, 40, 11, 8], 21
layer = model.blocks[0]
P = len(prompt_ids)
seen = {}
with torch.inference_mode():
    cache = model.new_cache(P + 1)
    model(torch.tensor([prompt_ids]), cache)  # prefill: slots 0 .. P-1
    hook = layer.attn.register_forward_hook(lambda module, args, out: seen.update(x=args[0], out=out))
    model(torch.tensor([[true_next]]), cache)  # the next token, at position P
    hook.remove()
past_k, past_v = cache.k[0, 0, :, :P], cache.v[0, 0, :, :P]
"""

CACHE_BLOCK = """qkv = attn.qkv(x).view(nh + 2 * nkv, hs)
q, k, v = qkv[:nh], qkv[nh:nh + nkv], qkv[nh + nkv:]
angles = {position} * theta ** (-torch.arange(0, hs, 2) / hs)
cos, sin = angles.cos(), angles.sin()
def rotate(t):
    t1, t2 = t[..., :hs // 2], t[..., hs // 2:]
    return torch.cat([{turn}], dim=-1)
keys = torch.cat([past_k, {k}[:, None]], dim=1)
values = torch.cat([past_v, v[:, None]], dim=1)
return attn.out(gqa(rotate(q)[:, None], keys, values).reshape(1, 1, nh * hs))"""
RIGHT_CACHE = dict(position="position", turn="t1 * cos - t2 * sin, t2 * cos + t1 * sin", k="rotate(k)")

SETUP_04_DECODE = """
import torch
import sdd_edu
from sdd_edu import course
from sdd_edu.decoding import baseline_decode, make_drafter
from sdd_edu.decoding.tree import tree_attention_mask
from sdd_edu.ladders import make_ladder
from sdd_edu.ngram import KatzTrigram
from sdd_edu.notebook import check
from sdd_edu.sampling import Sampling
from tests.test_speculative import random_lm, random_streams
def pick(full, quick):  # quick mode's sizes
    return quick
target, draft = random_lm(1), random_lm(1)  # the draft: the target a little perturbed, so some guesses are right
torch.manual_seed(3)
with torch.no_grad():
    for w in draft.model.parameters():
        w.add_(torch.randn_like(w) * 0.05)
ladder = make_ladder(target, draft, KatzTrigram.fit(random_streams(61, 0), 61), name="tiny")
model = target.model
prompt_ids = [3, 14, 15, 9, 2, 6, 5]
def tree_mask(parents, cached):  # exercise 1's, right
    return tree_attention_mask(parents, cached=cached, chain=1)[0]
greedy_walk = course.greedy_walk  # section 4's, right
"""

DECODE_BLOCK = """tree = drafter.get_candidates(context, Sampling(), None)
start = cache.length
mask = tree_mask(tree.parents, start)
_, pos = tree_attention_mask(tree.parents, cached=start, chain=1)
x = torch.tensor([[context[-1]] + tree.tokens], device=model.device)
logits = model(x, cache, position_ids=pos.to(model.device), attention_mask=mask.to(model.device))[0]
forwards += 1
accepted, next_token = greedy_walk(tree, logits)
{commit}
context += [tree.tokens[i] for i in accepted] + [next_token]
{update}"""
RIGHT_DECODE = dict(commit="cache.keep(start, [0] + [1 + i for i in accepted])",
                    update="drafter.update(context, tree, accepted)")

SETUP_05_CHAIN = """
import torch
from sdd_edu.decoding import baseline_decode, make_drafter
from sdd_edu.decoding.tree import tree_attention_mask
from sdd_edu.ladders import make_ladder
from sdd_edu.ngram import KatzTrigram
from sdd_edu.notebook import check
from sdd_edu.sampling import Sampling
from tests.test_speculative import random_lm
target, draft = random_lm(1), random_lm(2, n_layer=1)
# the trigram learns the draft's own greedy continuations, so that it guesses some of the draft's tokens
prompts = [[s, 7 * s % 61] for s in range(0, 61, 2)]
trigram = KatzTrigram.fit([p + baseline_decode(draft, p, 24, stop_at_eos=False).token_ids for p in prompts], 61)
ladder = make_ladder(target, draft, trigram, name="tiny")
prompt_ids, fanout = [0, 0, 32, 46, 24], (3, 2, 1, 1, 1, 1)  # the draft's chain: 4 tokens, the first 3 guessed
guesser = make_drafter(ladder, "staged", ngram_fanout=fanout, lookup=False, width=4, depth=6, budget=16)
guesser.begin(prompt_ids, len(prompt_ids) + 64)
g_tokens, g_parents = guesser.guess(prompt_ids)
P = len(prompt_ids)
mask, positions = tree_attention_mask(g_parents, cached=0, chain=P)
with torch.inference_mode():
    draft_logits = draft.model(torch.tensor([prompt_ids + g_tokens]), position_ids=positions, attention_mask=mask)[0]
root_dist, guessed_dists = draft_logits[P - 1].softmax(-1), draft_logits[P:].softmax(-1)
"""

CHAIN_BLOCK = """while len(chain) < depth:
    token = int(dist.argmax())
    {append}
    guessed = [i for i, (p, t) in enumerate(zip(g_parents, g_tokens)) if {match}]
    {count}
    if not guessed:
        break
    {late_append}
    {late_count}
    node, dist = guessed[0], guessed_dists[guessed[0]]"""
RIGHT_CHAIN = dict(append="chain.append(token)", match="p == node and t == token", count="", late_append="",
                   late_count="free += 1")

SETUP_04_GROW = SETUP_04 + """
from sdd_edu import course
p = [0.5, 0.2, 0.1, 0.06, 0.04, 0.02, 0.01, 0.0]  # per-rank acceptance, as section 1 measures it
"""

GROW_BLOCK = """parents, ranks, reach, paths = [], [], [], []
frontier = [(-q, 1, r, -1, r) for r, q in enumerate(child_probs(()), 1)]
heapq.heapify(frontier)
offered = len(frontier)
while frontier and len(parents) {within} budget:
    neg, depth, _, parent, rank = {pop}
    node = len(parents)
    parents.append(parent); ranks.append(rank); reach.append(-neg)
    paths.append((paths[parent] if parent != -1 else ()) + (rank,))
    if {deeper}:
        for r, q in enumerate(child_probs(paths[node]), 1):
            item = (-({score}), depth + 1, offered, node, r)
            {push}
            offered += 1
return parents, ranks"""
RIGHT_GROW = dict(within="<", pop="heapq.heappop(frontier)", deeper="depth < max_depth", score="reach[node] * q",
                  push="heapq.heappush(frontier, item)")

SETUP_04_KEEP = """
import torch
from sdd_edu.decoding.tree import TokenTree, tree_attention_mask
from sdd_edu.notebook import check
from tests.test_speculative import random_lm
model = random_lm(7).model  # a small random model stands in for the embedded target
def prefilled_cache(ids, room):
    cache = model.new_cache(len(ids) + room)
    with torch.inference_mode():
        model(torch.tensor([ids]), cache)
    return cache
context = [3, 14, 15, 9, 2]
tree = TokenTree(tokens=[8, 21, 33, 5, 40], parents=[-1, -1, 0, 1, 2])
accepted = [0, 2, 4]  # the path root -> 0 -> 2 -> 4: slots 0, 1, 3, 5 after start are kept
cache = prefilled_cache(context[:-1], 1 + len(tree))
start = cache.length
mask, pos = tree_attention_mask(tree.parents, cached=start, chain=1)
with torch.inference_mode():
    model(torch.tensor([[context[-1]] + tree.tokens]), cache, position_ids=pos, attention_mask=mask)
verified = cache.kv.clone()
"""

KEEP_BLOCK = """src = [{origin} for s in slots]{order}
k[:, :, :, start:start + len(src)] = k[:, :, :, src]
v[:, :, :, start:start + len(src)] = v[:, :, :, src]
return {length}"""
RIGHT_KEEP = dict(origin="start + s", order="", length="start + len(src)")

SETUP_07_CAPSTONE = """
import heapq
from sdd_edu.measure import tree_plan
from sdd_edu.notebook import check
# a plan's measurements set by hand (a CPU-like device: a forward costs more with every token)
plan = tree_plan._choose({"method": "tree", "device": "by hand", "dtype": "torch.float32", "measured": "never",
                          "rank_acceptance": [0.5, 0.2, 0.1], "target_ms": [0.0] + [10.0 + 1.5 * n for n in range(1, 9)],
                          "draft_ms": [0.0] + [2.0 + 0.3 * n for n in range(1, 9)], "overhead_seconds": 0.002,
                          "beam": 4, "guesses": 0, "rounds": 1, "staged_draft": None}, 7)
"""

# best-first growth, as 04's solution grows a tree; 07's planner runs it once per depth limit
GROWTH = """parents, chance, depth = [], [], []
frontier = [(-p_rank[0], -1, 0)]
while frontier and len(parents) < max_nodes:
    minus_chance, parent, rank = heapq.heappop(frontier)
    node = len(parents)
    parents.append(parent)
    chance.append(-minus_chance)
    depth.append(1 if parent == -1 else depth[parent] + 1)
    if rank + 1 < len(p_rank):
        above = 1.0 if parent == -1 else chance[parent]
        heapq.heappush(frontier, (-{above} * p_rank[rank + 1], parent, rank + 1))
    if depth[node] < {limit}:
        heapq.heappush(frontier, (-{own} * p_rank[0], node, 0))
"""
GROWN_BEST_FIRST = GROWTH.format(above="above", own="chance[node]", limit="max_depth")

PLANNER_BLOCK = ("best, best_rate = {start}\nfor depth_limit in range(1, {depths}):\n"
                 + textwrap.indent(GROWTH.format(above="{above}", own="{own}", limit="depth_limit"), "    ")
                 + "        if rate(parents) > best_rate * (1 + 1e-12):\n"
                 "            best, best_rate = list(parents), rate(parents)\nreturn best")

RIGHT_PLANNER = dict(start="[], rate([])", depths="max_depth + 1", above="above", own="chance[node]")

SETUP_04_SAMPLED = """
import torch
from sdd_edu import course
from sdd_edu.decoding.tree import ROOT, TokenTree, verify
from sdd_edu.notebook import check
from sdd_edu.sampling import Sampling
def normalised(x):  # section 9's
    return x / x.sum(-1, keepdim=True).clamp_min(1e-300)
"""

SAMPLED_WALK_BLOCK = """node, accepted = ROOT, []
while True:
    p = probabilities(logits[0 if node == ROOT else 1 + node], sampling).double()
    kept = None
    if tree.children(node):
        q = tree.child_dists[node].double().clone()
        for child in tree.children(node):
            x = tree.tokens[child]
            if float(torch.rand((), generator=generator)) * q[x] < p[x]:
                kept = child
                break
            {after_rejection}
    if kept is None:
        return accepted, {last}
    accepted.append(kept)
    node = kept"""
RIGHT_SAMPLED_WALK = dict(after_rejection="p = normalised((p - q).clamp_min(0))\n            q[x] = 0\n            "
                                          "q = normalised(q)", last="sample(p, generator)")

SETUP_05_TREE = """
import torch
from sdd_edu.notebook import check
# a made-up confident draft (as the real one is) and an n-gram that guesses its likeliest tokens: the growth's
# order, its scores and its depth limit all show in the trees
g = torch.Generator().manual_seed(3)
dists = torch.softmax(torch.randn(40, 30, generator=g) * 2.5, -1)
root_dist, guessed_dists = dists[0], dists[1:]
g_tokens, g_parents, place = [], [], -1
for fan in (4, 3, 2, 1, 1):
    first = len(g_tokens)
    likely = torch.argsort(root_dist if place == -1 else guessed_dists[place], descending=True).tolist()
    g_tokens += likely[:fan]
    g_parents += [place] * fan
    place = first
"""

STAGED_TREE_BLOCK = """frontier, found = [], 0

def offer(dist, score, level, node, place):
    nonlocal found
    top = torch.topk(dist, width)
    for prob, token in zip(top.values.tolist(), top.indices.tolist()):
        heapq.heappush(frontier, ({key}, level, found, node, place, token))
        found += 1

offer(root_dist, 1.0, 1, -1, -1)
while frontier and len(tokens) < budget:
    minus_score, level, _, parent, place, token = heapq.heappop(frontier)
    node = len(tokens)
    tokens.append(token)
    parents.append(parent)
    guess = next((i for i, (p, t) in enumerate(zip(g_parents, g_tokens)) if {match}), None)
    if guess is not None{deeper}:
        offer(guessed_dists[guess], -minus_score, level + 1, node, guess)"""
RIGHT_STAGED_TREE = dict(key="-score * prob", match="p == place and t == token", deeper=" and level < depth")

SETUP_03_DRAFT_CACHE = """
import torch
from sdd_edu.notebook import check
from tests.test_speculative import random_lm
def pick(full, quick):  # quick mode's sizes
    return quick
target, draft = random_lm(1), random_lm(1)  # the draft: the target a little perturbed, so that some drafts land
torch.manual_seed(3)
with torch.no_grad():
    for w in draft.model.parameters():
        w.add_(torch.randn_like(w) * 0.05)
ids = [3, 14, 15, 9, 2, 6, 5]
"""

DRAFT_CACHE_BLOCK = """n = 0
while n < min(len(seen), len(context) - 1) and seen[n] == context[n]:
    n += 1
{rollback}
feed = context[n:]
with torch.inference_mode():
    while True:
        logits = model(torch.tensor([feed], device=model.device), cache)[0, -1]
        seen += feed
        drafted.append(int(logits.argmax()))
        if len(drafted) == gamma:
            break
        feed = drafted[-1:]"""
RIGHT_DRAFT_CACHE = dict(rollback="cache.truncate(n)\ndel seen[n:]")


SETUP_02_GRAPH = """
import torch
from types import SimpleNamespace
from sdd_edu.fast import record
from sdd_edu.notebook import check
from tests.test_speculative import random_lm
target = random_lm(7)  # a small random model stands in for the embedded target
env = SimpleNamespace(device=torch.device("cpu"))
T = 8
window = torch.tensor([[3, 14, 15, 9, 2, 6, 5, 35]])
static_ids = window.clone()
positions = torch.arange(T)[None]
causal = torch.ones(T, T, dtype=torch.bool).tril()
def window_forward():
    return target.model.head_logits(target.model.body(static_ids, positions, None, 0, causal))
graph, static_logits = record(window_forward, "cpu")
"""

SETUP_08_FORWARD = """
import torch
from types import SimpleNamespace
from sdd_edu.grade import _tiny_feature_draft
from sdd_edu.notebook import check
tiny_target, tiny_draft = _tiny_feature_draft(5, 20, forward_forbidden=False)
fdraft = SimpleNamespace(model=tiny_draft)  # the embedded ladder's feature draft, small
x = torch.randint(0, 53, (1, 9), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    _, feats = tiny_target(x, features=True)
"""

SETUP_08_LOSS = SETUP_08_FORWARD + """
lengths = [9, 5, 7]
tokens = torch.randint(0, 53, (3, 9), generator=torch.Generator().manual_seed(2))
valid = torch.arange(9)[None] < torch.tensor(lengths)[:, None]  # right-padded
with torch.no_grad():
    _, features = tiny_target(tokens, features=True)
features = features * valid[..., None]
"""

SETUP_08_DEPTH = """
from sdd_edu.notebook import check
GAMMA = 4
by_depth = {"small draft": [0.5, 0.6, 0.55, 0.7], "feature draft": [0.6, 0.45, 0.4, 0.35]}
"""

SETUP_08_WINNER = SETUP_08_DEPTH + """
import math
import numpy as np
c, r = {"small draft": 0.06, "feature draft": 0.04}, 1.9
chain_speed, base_speed = {"small draft": 40.0, "feature draft": 42.0}, 35.0
"""

FEATURE_FORWARD_BLOCK = """embedded = draft.target.tok_emb(next_ids)
x = {project}
h = {layer}
return draft.head_logits({head}), h"""
RIGHT_FEATURE_FORWARD = dict(project="draft.fc(torch.cat([features, embedded], dim=-1))",
                             layer="draft.layer(x, position_ids=positions)", head="h")

LOSS_BLOCK = """read, after, wanted = features[:, :-1], {after}, {wanted}
pairs = valid[:, :-1] & valid[:, 1:]
positions = torch.arange(1, features.shape[1])
logits, predicted = draft(read, after, position_ids=positions)
regression = {regression}
with torch.no_grad():
    target_dist = torch.softmax(draft.head_logits(wanted), -1)
cross = {cross}
return {total}"""
RIGHT_LOSS = dict(after="tokens[:, 1:]", wanted="features[:, 1:]",
                  regression='F.smooth_l1_loss(predicted, wanted, reduction="none").mean(-1)',
                  cross="-(target_dist * torch.log_softmax(logits, -1)).sum(-1)",
                  total="((regression + token_weight * cross) * pairs).sum() / pairs.sum()")

WINNER_BLOCK = """predicted = {{}}
for drafter_name, accept in by_depth.items():
    tokens_per_step = {tokens}
    predicted[drafter_name] = tokens_per_step / ({cost})
winner = {winner}"""
RIGHT_WINNER = dict(tokens="1 + sum(math.prod(accept[:depth]) for depth in range(1, GAMMA + 1))",
                    cost="GAMMA * c[drafter_name] + r", winner="max(predicted, key=predicted.get)")

EXERCISES = {
    "04 best-first tree growth": Exercise("04_token_trees", "a frontier of candidates, each with its probability",
                                          SETUP_04_GROW, {
        "breadth-first: the oldest candidate first": GROW_BLOCK.format(
            **{**RIGHT_GROW, "pop": "frontier.pop(0)", "push": "frontier.append(item)"}),
        "the child's own probability, not its path's": GROW_BLOCK.format(**{**RIGHT_GROW, "score": "q"}),
        "one node over the budget": GROW_BLOCK.format(**{**RIGHT_GROW, "within": "<="}),
        "no depth limit": GROW_BLOCK.format(**{**RIGHT_GROW, "deeper": "True"}),
    }),
    "04 keeping the accepted path": Exercise("04_token_trees", "the slots count from start", SETUP_04_KEEP, {
        "slots counted from 0, not from start": KEEP_BLOCK.format(**{**RIGHT_KEEP, "origin": "s"}),
        "the length without start": KEEP_BLOCK.format(**{**RIGHT_KEEP, "length": "len(src)"}),
        "the kept slots in reverse order": KEEP_BLOCK.format(**{**RIGHT_KEEP, "order": "[::-1]"}),
        "only the length set, nothing moved": "return start + len(slots)",
    }),
    "01 greedy decoding with the cache": Exercise("01_engine_and_kv_cache", "the prompt's forward fills the cache",
                                                  SETUP_01_LOOP, {
        "no cache: the whole sequence read again for every token": (
            "ids = list(prompt_ids)\n"
            "for _ in range(n_new):\n"
            "    ids.append(int(model(torch.tensor([ids]), last_only=True)[0, -1].argmax()))\n"
            "return ids[len(prompt_ids):]"),
        "the whole sequence fed to the cache again": (
            "cache = model.new_cache(4096)\n"
            "logits = model(torch.tensor([prompt_ids]), cache, last_only=True)[0, -1]\n"
            "new = []\n"
            "for _ in range(n_new):\n"
            "    new.append(int(logits.argmax()))\n"
            "    logits = model(torch.tensor([prompt_ids + new]), cache, last_only=True)[0, -1]\n"
            "return new"),
        "the prompt's first row, not its last": (
            "cache = model.new_cache(len(prompt_ids) + n_new)\n"
            "logits = model(torch.tensor([prompt_ids]), cache)[0, 0]\n"
            "new = []\n"
            "for _ in range(n_new):\n"
            "    new.append(int(logits.argmax()))\n"
            "    logits = model(torch.tensor([[new[-1]]]), cache)[0, -1]\n"
            "return new"),
        "the last prompt token read twice": LOOP_BLOCK.format(**{**RIGHT_LOOP, "step": (
            "model(torch.tensor([[prompt_ids[-1]] if len(new) == 1 else [new[-2]]]), cache)[0, -1]")}),
        "the logits never updated": LOOP_BLOCK.format(**{**RIGHT_LOOP, "step": "logits"}),
    }),
    "01 attention with the cache": Exercise("01_engine_and_kv_cache", "attn.qkv(x).view", SETUP_01_CACHE, {
        "k left unrotated": CACHE_BLOCK.format(**{**RIGHT_CACHE, "k": "k"}),
        "rotated at the position before": CACHE_BLOCK.format(**{**RIGHT_CACHE, "position": "(position - 1)"}),
        "turned the other way": CACHE_BLOCK.format(**{**RIGHT_CACHE, "turn": "t1 * cos + t2 * sin, t2 * cos - t1 * sin"}),
    }),
    "04 the whole loop": Exercise("04_token_trees", "draft a tree; one target forward", SETUP_04_DECODE, {
        "only the root kept in the cache": DECODE_BLOCK.format(**{**RIGHT_DECODE, "commit": "cache.truncate(start + 1)"}),
        "the root dropped from the cache": DECODE_BLOCK.format(
            **{**RIGHT_DECODE, "commit": "cache.keep(start, [1 + i for i in accepted])"}),
        "node indices taken for tokens": DECODE_BLOCK.format(**RIGHT_DECODE).replace(
            "[tree.tokens[i] for i in accepted]", "accepted"),
        "no positions: every node read at the next slot": DECODE_BLOCK.format(**RIGHT_DECODE).replace(
            "position_ids=pos.to(model.device), ", ""),
        "no mask: every node sees every other": DECODE_BLOCK.format(**RIGHT_DECODE).replace(
            ", attention_mask=mask.to(model.device)", ""),
    }),
    "05 staged growth": Exercise("05_staged_speculative_decoding", "argmax of dist; look for i", SETUP_05_CHAIN, {
        "every token counted free": CHAIN_BLOCK.format(**{**RIGHT_CHAIN, "count": "free += 1", "late_count": ""}),
        "a guess anywhere in the subtree": CHAIN_BLOCK.format(**{**RIGHT_CHAIN, "match": "t == token"}),
        "the unguessed token left out": CHAIN_BLOCK.format(
            **{**RIGHT_CHAIN, "append": "", "late_append": "chain.append(token)"}),
           "free: the chain's length less one": CHAIN_BLOCK.format(**RIGHT_CHAIN) + "\nfree = len(chain) - 1",
        "guesses matched by level, not by parent": (
            "level = []\n"
            "for pp in g_parents:\n"
            "    level.append(0 if pp == -1 else level[pp] + 1)\n"
            + CHAIN_BLOCK.format(**{**RIGHT_CHAIN, "match": "level[i] == len(chain) - 1 and t == token"})),
    }),
    "04 the greedy walk": Exercise("04_token_trees", "from ROOT, take the argmax of the node's row", SETUP_04_WALK, {
        "the first child, whatever the target says": (
            "node, accepted = ROOT, []\n"
            "while tree.children(node):\n"
            "    node = tree.children(node)[0]\n"
            "    accepted.append(node)\n"
            "return accepted, int(logits[1 + node].argmax())"),
        "the root's row at every level": (
            "node, accepted = ROOT, []\n"
            "best = int(logits[0].argmax())\n"
            "while True:\n"
            "    match = [c for c in tree.children(node) if tree.tokens[c] == best]\n"
            "    if not match:\n"
            "        return accepted, best\n"
            "    node = match[0]\n"
            "    accepted.append(node)"),
    }),
    "04 the sampled walk": Exercise("04_token_trees", "section 9's rule for one trial", SETUP_04_SAMPLED, {
        "p not corrected after a rejection": SAMPLED_WALK_BLOCK.format(**{
            **RIGHT_SAMPLED_WALK, "after_rejection": "q[x] = 0\n            q = normalised(q)"}),
        "q kept whole after a rejection": SAMPLED_WALK_BLOCK.format(**{
            **RIGHT_SAMPLED_WALK, "after_rejection": "p = normalised((p - q).clamp_min(0))"}),
        "the target's argmax when no child is kept": SAMPLED_WALK_BLOCK.format(**{
            **RIGHT_SAMPLED_WALK, "last": "int(p.argmax())"}),
        "the paper's rule: y ~ p, then the child holding y": (
            "node, accepted = ROOT, []\n"
            "while True:\n"
            "    y = sample(probabilities(logits[0 if node == ROOT else 1 + node], sampling), generator)\n"
            "    match = [c for c in tree.children(node) if tree.tokens[c] == y]\n"
            "    if not match:\n"
            "        return accepted, y\n"
            "    node = match[0]\n"
            "    accepted.append(node)"),
    }),
    "05 staged growth, a tree": Exercise("05_staged_speculative_decoding", "only a node the n-gram guessed",
                                         SETUP_05_TREE, {
        "breadth-first: the oldest candidate first": STAGED_TREE_BLOCK.format(**{**RIGHT_STAGED_TREE, "key": "found"}),
        "a guess matched by its token alone, anywhere in the subtree": STAGED_TREE_BLOCK.format(
            **{**RIGHT_STAGED_TREE, "match": "t == token"}),
        "scored by the node's own probability, not its path's": STAGED_TREE_BLOCK.format(
            **{**RIGHT_STAGED_TREE, "key": "-prob"}),
        "no depth limit": STAGED_TREE_BLOCK.format(**{**RIGHT_STAGED_TREE, "deeper": ""}),
    }),
    "03 the draft's own cache": Exercise("03_speculative_decoding", "forget what the cache holds past the prefix",
                                        SETUP_03_DRAFT_CACHE, {
        "no rollback: the rejected drafts stay": DRAFT_CACHE_BLOCK.format(**{**RIGHT_DRAFT_CACHE, "rollback": ""}),
        "the cache rolled back, seen not": DRAFT_CACHE_BLOCK.format(
            **{**RIGHT_DRAFT_CACHE, "rollback": "cache.truncate(n)"}),
        "everything read again at every step": DRAFT_CACHE_BLOCK.format(
            **{**RIGHT_DRAFT_CACHE, "rollback": "n = 0\ncache.truncate(0)\ndel seen[:]"}),
        "one token too many forgotten": DRAFT_CACHE_BLOCK.format(
            **{**RIGHT_DRAFT_CACHE, "rollback": "n = max(n - 1, 0)\ncache.truncate(n)\ndel seen[n:]"}),
        "the last drafted token fed too": (
            "n = 0\n"
            "while n < min(len(seen), len(context) - 1) and seen[n] == context[n]:\n"
            "    n += 1\n"
            "cache.truncate(n)\n"
            "del seen[n:]\n"
            "feed = context[n:]\n"
            "with torch.inference_mode():\n"
            "    for _ in range(gamma):\n"
            "        logits = model(torch.tensor([feed], device=model.device), cache)[0, -1]\n"
            "        seen += feed\n"
            "        drafted.append(int(logits.argmax()))\n"
            "        feed = drafted[-1:]\n"
            "    model(torch.tensor([feed], device=model.device), cache)\n"
            "    seen += feed"),
    }),
    "00 predictions before the run": Exercise("00_setup_and_tour", "does a guess change which token", SETUP_00_PREDICT, {
        "the text changes with the method": "same_tokens = False\nfewer_forwards = True",
        "no forward saved": "same_tokens = True\nfewer_forwards = False",
        "a prediction left as a string": 'same_tokens = "yes"\nfewer_forwards = True',
    }),
    "00 a streaming callback": Exercise("00_setup_and_tour", "keep each batch of token ids", SETUP_00_STREAM, {
        "only the last batch": "batches[:] = [list(ids)]",
        "the first token of each batch": "batches.append(list(ids)[:1])",
        "the list itself, not a copy": "batches.append(ids)",
    }),
    "04 multi-candidate rejection sampling": Exercise("04_token_trees", "keep x where u * q_now[x] < p_now[x]",
                                                      SETUP_04_RRS, {
        "p not corrected after a rejection": (
            "u = torch.rand(n, generator=generator, dtype=torch.float64)\n"
            "keep = (out < 0) & (u * q_now[rows, x] < p_now[rows, x])\n"
            "out[keep] = x[keep]\n"
            "if not replacement and renormalise_q:\n"
            "    q_now[rows, x] = 0\n"
            "    q_now = normalised(q_now)"),
        "a candidate kept with probability p(x)": (
            "u = torch.rand(n, generator=generator, dtype=torch.float64)\n"
            "keep = (out < 0) & (u < p_now[rows, x])\n"
            "out[keep] = x[keep]\n"
            "p_now = normalised((p_now - q_now).clamp_min(0))\n"
            "if not replacement and renormalise_q:\n"
            "    q_now[rows, x] = 0\n"
            "    q_now = normalised(q_now)"),
    }),
    "01 grouped-query attention": Exercise("01_engine_and_kv_cache", "q.reshape(nkv, nh // nkv * N, hs)",
                                           SETUP_01_GQA, {
        "kv heads repeated, not grouped": (
            "g = nh // nkv\n"
            "k, v = k.repeat(g, 1, 1), v.repeat(g, 1, 1)\n"
            "return (q @ k.transpose(-1, -2) / math.sqrt(hs)).softmax(-1) @ v"),
        "unscaled scores": (
            "g = nh // nkv\n"
            "w = (q.reshape(nkv, g * N, hs) @ k.transpose(-1, -2)).softmax(-1)\n"
            "return (w @ v).reshape(nh, N, hs)"),
        "group size and group count swapped": (
            "w = (q.reshape(nh // nkv, nkv * N, hs) @ k.transpose(-1, -2) / math.sqrt(hs)).softmax(-1)\n"
            "return (w @ v).reshape(nh, N, hs)"),
        "the package's attention called": "return attention(q[None], k[None], v[None], None)[0]",
        "right, but k and v copied per query head": (
            "g = nh // nkv\n"
            "k, v = k.repeat_interleave(g, dim=0), v.repeat_interleave(g, dim=0)\n"
            "return (q @ k.transpose(-1, -2) / math.sqrt(hs)).softmax(-1) @ v"),
        "right, but expanded and then reshaped (a copy)": (
            "g, S = nh // nkv, k.shape[1]\n"
            "k = k[:, None].expand(nkv, g, S, hs).reshape(nh, S, hs)\n"
            "v = v[:, None].expand(nkv, g, S, hs).reshape(nh, S, hs)\n"
            "return (q @ k.transpose(-1, -2) / math.sqrt(hs)).softmax(-1) @ v"),
    }),
    "04 the tree attention mask": Exercise("04_token_trees", "every row sees the cache and the root",
                                           SETUP_04_MASK, {
        "a node sees only itself": (
            "n = 1 + len(parents)\n"
            "mask = torch.zeros(n, cached + n, dtype=torch.bool)\n"
            "mask[:, :cached + 1] = True\n"
            "for i in range(len(parents)):\n"
            "    mask[1 + i, cached + 1 + i] = True\n"
            "return mask"),
        "a chain's causal mask": (
            "n = 1 + len(parents)\n"
            "return torch.ones(n, cached + n, dtype=torch.bool).tril(cached)"),
           "ancestors up to the grandparent": (
            "n = 1 + len(parents)\n"
            "mask = torch.zeros(n, cached + n, dtype=torch.bool)\n"
            "mask[:, :cached + 1] = True\n"
            "for i in range(len(parents)):\n"
            "    mask[1 + i, cached + 1 + i] = True\n"
            "    if parents[i] != -1:\n"
            "        mask[1 + i, cached + 1 + parents[i]] = True\n"
            "        if parents[parents[i]] != -1:\n"
            "            mask[1 + i, cached + 1 + parents[parents[i]]] = True\n"
            "return mask"),
    }),
    "04 a mask and positions by hand": Exercise("04_token_trees", "sees: each node -> itself and its ancestors",
                                                SETUP_04, {
        "siblings see each other": (
            "sees = {0: [0, 2], 1: [0, 1], 2: [0, 2], 3: [0, 1, 3], 4: [2, 4]}\n"
            "ex_positions = [0, 1, 2, 1, 3, 2]"),
        "positions counted from 1": (
            "sees = {0: [0], 1: [0, 1], 2: [2], 3: [0, 1, 3], 4: [2, 4]}\n"
            "ex_positions = [1, 2, 3, 2, 4, 3]"),
    }),
    "05 a backed-off probability": Exercise("05_staged_speculative_decoding", "left: 1 - the discounted trigram",
                                            SETUP_05_KATZ, {
        "counts not discounted": (
            "left = 1 - sum(r / c_ab for r in after.values())\n"
            "lower = 1 - sum(stdlib.prob([b], v) for v in after)"),
        "the unigram in place of the bigram": (
            "left = 1 - sum((d[r] if r <= k else 1.0) * r / c_ab for r in after.values())\n"
            "lower = 1 - sum(stdlib.unigram[v] for v in after)"),
           "counts above k discounted as k": (
            "left = 1 - sum(d[min(r, k)] * r / c_ab for r in after.values())\n"
            "lower = 1 - sum(stdlib.prob([b], v) for v in after)"),
        "every count discounted by d[1]": (
            "left = 1 - sum(d[1] * r / c_ab for r in after.values())\n"
            "lower = 1 - sum(stdlib.prob([b], v) for v in after)"),
    }),
    "01 the KV cache's size": Exercise("01_engine_and_kv_cache", "keys and values (2) x layers", SETUP_01, {
        "keys only": "cache_bytes = cfg.n_layer * cfg.n_kv_head * slots * cfg.head_dim * 4\ncache_bytes_mha = 2 * cfg.n_layer * cfg.n_head * slots * cfg.head_dim * 4",
        "a head per query head": "cache_bytes = 2 * cfg.n_layer * cfg.n_head * slots * cfg.head_dim * 4\ncache_bytes_mha = 2 * cfg.n_layer * cfg.n_head * slots * cfg.head_dim * 4",
        "2 bytes per number": "cache_bytes = 2 * cfg.n_layer * cfg.n_kv_head * slots * cfg.head_dim * 2\ncache_bytes_mha = 2 * cfg.n_layer * cfg.n_head * slots * cfg.head_dim * 4",
        "without GQA: the same cache": "cache_bytes = 2 * cfg.n_layer * cfg.n_kv_head * slots * cfg.head_dim * 4\n"
                                       "cache_bytes_mha = cache_bytes",
        "without GQA: a head per group": "cache_bytes = 2 * cfg.n_layer * cfg.n_kv_head * slots * cfg.head_dim * 4\n"
                                         "cache_bytes_mha = cache_bytes * cfg.n_kv_head",
    }),
    "01 entropy": Exercise("01_engine_and_kv_cache", "H(p) = -sum p log p", SETUP_01, {
        "in bits": "return float(-(p * p.log2()).sum())",
        "without the minus": "return float((p * p.log()).sum())",
        "the min-entropy: the largest p alone": "return float(-p.max().log())",
        "the collision entropy": "return float(-(p * p).sum().log())",
    }),
    "02 the largest tree within the limit": Exercise("02_why_decoding_is_slow", "the largest n in 1..4096",
                                                     SETUP_02_SEARCH, {
        "the first n past the limit": (
            "largest = next(n for n in range(1, 4097) if roofline_cost(n) > limit * roofline_cost(1))"),
        "the limit on tree nodes, not tokens": (
            "largest = max(n for n in range(1, 4097) if roofline_cost(n + 1) <= limit * roofline_cost(1))"),
    }),
    "03 expected tokens per forward": Exercise("03_speculative_decoding", "add it up for d = 1 to gamma",
                                               SETUP_03_FORMULAS, {
        "one depth short": "by_hand = 1 + sum(math.prod(alphas[:d]) for d in range(1, gamma))",
        "the draft's tokens only": "by_hand = sum(math.prod(alphas[:d]) for d in range(1, gamma + 1))",
        "the acceptances added, not multiplied": "by_hand = 1 + sum(alphas)",
        "the products taken from the deepest end": "by_hand = 1 + sum(math.prod(alphas[-d:]) for d in range(1, gamma + 1))",
        "section 2's formula at the mean": "by_hand = expected_tokens_per_forward(sum(alphas) / gamma, gamma)",
    }),
    "03 the best draft length": Exercise("03_speculative_decoding", "evaluate speedup(alpha, gamma, c)",
                                         SETUP_03_FORMULAS, {
        "tokens per forward, the cost forgotten": (
            "def speedup(alpha, gamma, c):\n    return expected_tokens_per_forward(alpha, gamma) / (gamma * c + 1)\n"
            "best_gamma = max(range(1, 33), key=lambda k: expected_tokens_per_forward(alpha, k))"),
        "the smallest cost": "def speedup(alpha, gamma, c):\n    return expected_tokens_per_forward(alpha, gamma) / (gamma * c + 1)\nbest_gamma = min(range(1, 33), key=lambda k: k * c + 1)",
        "the verification forward forgotten": (
            "def speedup(alpha, gamma, c):\n    return expected_tokens_per_forward(alpha, gamma) / (gamma * c)\nbest_gamma = max(range(1, 33), key=lambda k: speedup(alpha, k, c))"),
        "the draft's forwards counted once": (
            "def speedup(alpha, gamma, c):\n    return expected_tokens_per_forward(alpha, gamma) / (c + 1)\nbest_gamma = max(range(1, 33), key=lambda k: speedup(alpha, k, c))"),
    }, from_block=True),
    "04 node depths": Exercise("04_token_trees", "one more than the parent's depth", SETUP_04_DEPTH, {
        "the parent's depth": "return 0 if i == -1 else depth(parents[i])",
        "the root at depth 1": "return 1 if i == -1 else 1 + depth(parents[i])",
    }),
    "04 expected accepted nodes": Exercise("04_token_trees", "one term per node: the product of p[rank - 1]",
                                           SETUP_04, {
        "a term per level, not per node": "my_prediction = 0.6 + 0.6 * 0.6 + 0.6 * 0.6 * 0.6",
        "ranks read from 0": "my_prediction = 0.2 + 0.1 + 0.2 * 0.2 + 0.2 * 0.1 + 0.2 * 0.2 * 0.2",
    }),
    "06 tokens per second from the counters": Exercise("06_reproducing_the_paper", "a step costs cost_ratio",
                                                       SETUP_06, {
        "the target's share forgotten": (
            "step_seconds = cost_ratio / b['tokens_per_second']\n"
            "estimate = s['tokens_per_target_forward'] / step_seconds"),
        "the share applied the wrong way": (
            "step_seconds = cost_ratio / b['tokens_per_second'] * s['time_split']['target_seconds']\n"
            "estimate = s['tokens_per_target_forward'] / step_seconds"),
        "the step in milliseconds": (
            "step_seconds = 1000 * cost_ratio / b['tokens_per_second'] / s['time_split']['target_seconds']\n"
            "estimate = s['tokens_per_target_forward'] / step_seconds * 1000"),
    }),
    "06 the break-even acceptance": Exercise("06_reproducing_the_paper", "scan a = 0, 0.001",
                                             "from sdd_edu.notebook import check", {
        "where the speedup first rises above zero": (
            "break_even = next(a / 1000 for a in range(1001) if speedup(a / 1000) > 0)"),
        "the draft's cost left out": (
            "break_even = next(a / 1000 for a in range(1001) if speedup(a / 1000, c=0) >= 1)"),
           "the largest acceptance that is still slower": (
            "break_even = max(a / 1000 for a in range(1001) if speedup(a / 1000) < 1)"),
    }),
    "06 the H100 table's accounting": Exercise("06_reproducing_the_paper", "count a step in target forwards",
                                               SETUP_06_GPU, {
        "the draft cost counted once": H100_BLOCK.format(**{**RIGHT_H100, "cost": "C_H100 + 1"}),
        "gamma + 1 draft forwards": H100_BLOCK.format(**{**RIGHT_H100, "cost": "(GAMMA_H100 + 1) * C_H100 + 1"}),
        "exercise 2's CPU costs": H100_BLOCK.format(**{**RIGHT_H100, "cost": "GAMMA_H100 * 0.064 + 1.5"}),
        "the speedup inverted": H100_BLOCK.format(**{**RIGHT_H100, "predicted": "cost / TOKENS_PER_FORWARD"}),
        "the speedup lost, not a share of the step": H100_BLOCK.format(
            **{**RIGHT_H100, "share": "gpu_predicted - MEASURED_SPEEDUP"}),
    }),
    "06 the paper's baseline and its weights": Exercise("06_reproducing_the_paper",
                                                        "the weights' bytes over the bandwidth",
                                                        "from sdd_edu.notebook import check", {
        "4 bytes a weight (fp32)": WEIGHTS_BLOCK.format(**{**RIGHT_WEIGHTS, "bytes": "4"}),
        "bits, not bytes": WEIGHTS_BLOCK.format(**{**RIGHT_WEIGHTS, "bytes": "16"}),
        "the share inverted": WEIGHTS_BLOCK.format(**{**RIGHT_WEIGHTS, "share": "token_ms / weight_read_ms"}),
    }),
    "07 a chain or a tree of three nodes": Exercise("07_beyond_the_paper", "one forward per level of the tree",
                                                    SETUP_07_SHAPES, {
        "the verification as one forward (notebook 03's model)": SHAPES_BLOCK.format(**{**RIGHT_SHAPES, "verify": "1"}),
        "a draft forward per node": SHAPES_BLOCK.format(**{**RIGHT_SHAPES, "fork": "3", "fan": "3"}),
        "the target's own token left out": SHAPES_BLOCK.format(**{**RIGHT_SHAPES, "own": ""}),
        "the most tokens, the cost forgotten": SHAPES_BLOCK.format(**{**RIGHT_SHAPES, "per_cost": ""}),
    }),
    "02 intensity in bf16": Exercise("02_why_decoding_is_slow", "slots = context + 1; FLOPs", SETUP_02_CONTEXT, {
        "attention's FLOPs left out": BF16_BLOCK.format(**{**RIGHT_BF16, "attention": "0"}),
        "the cache counted per query head": BF16_BLOCK.format(**{**RIGHT_BF16, "kv_heads": "cfg.n_head"}),
        "the cached slots only, not the new one": BF16_BLOCK.format(**{**RIGHT_BF16, "slots": "context"}),
        "keys only": BF16_BLOCK.format(**{**RIGHT_BF16, "pair": "1"}),  # a key and no value per slot
        "4 bytes a number": BF16_BLOCK.format(**{**RIGHT_BF16, "bytes": "4"}),
        "the weights alone": BF16_BLOCK.format(**{**RIGHT_BF16, "pair": "0"}),
    }),
    "03 the acceptance rule as a sampler": Exercise("03_speculative_decoding", "x = n draws from q", SETUP_03, {
        "draws from p and flags at random": (
            "x = torch.multinomial(p, n, replacement=True, generator=generator)\n"
            "return x, torch.rand(n, generator=generator) < float(torch.minimum(p, q).sum())"),
        "resamples from p after a rejection": (
            "x = torch.multinomial(q, n, replacement=True, generator=generator)\n"
            "accepted = torch.rand(n, generator=generator) * q[x] < p[x]\n"
            "again = torch.multinomial(p, n, replacement=True, generator=generator)\n"
            "return torch.where(accepted, x, again), accepted"),
        "accepts with p(x) instead of p(x)/q(x)": (
            "x = torch.multinomial(q, n, replacement=True, generator=generator)\n"
            "accepted = torch.rand(n, generator=generator) < p[x]\n"
            "residual = torch.clamp(p - q, min=0)\n"
            "again = torch.multinomial(residual / residual.sum(), n, replacement=True, generator=generator)\n"
            "return torch.where(accepted, x, again), accepted"),
        "the residual: p where p > q": (
            "x = torch.multinomial(q, n, replacement=True, generator=generator)\n"
            "accepted = torch.rand(n, generator=generator) * q[x] < p[x]\n"
            "residual = p * (p > q)\n"
            "again = torch.multinomial(residual / residual.sum(), n, replacement=True, generator=generator)\n"
            "return torch.where(accepted, x, again), accepted"),
    }),
    "05 draft forwards saved": Exercise("05_staged_speculative_decoding", "add up step['draft_forwards']", SETUP_05, {
        "counts steps, not forwards": (
            "tree_forwards, staged_forwards = len(tree_run.trace), len(staged_run.trace)\n"
            "saved_per_token = (tree_forwards - staged_forwards) / len(staged_run.token_ids)"),
        "saved per step instead of per token": (
            "tree_forwards = sum(s['draft_forwards'] for s in tree_run.trace)\n"
            "staged_forwards = sum(s['draft_forwards'] for s in staged_run.trace)\n"
            "saved_per_token = (tree_forwards - staged_forwards) / len(staged_run.trace)"),
    }),
    "07 the capstone: a tree planner": Exercise("07_beyond_the_paper", "which nodes should a tree hold",
                                               SETUP_07_CAPSTONE, {
        "the largest tree, best-first": GROWN_BEST_FIRST + "return parents",
        "the best chain": "return max(([-1] + list(range(k - 1)) if k else [] for k in range(max_depth + 1)), key=rate)",
        "the best fan below the root": "return max(([-1] * k for k in range(max_nodes + 1)), key=rate)",
        "the most tokens per forward, the cost forgotten": (
            "from sdd_edu.decoding.autotree import optimal_tree\n"
            "return optimal_tree(p_rank, max_nodes, max_depth)[0]"),
        "a node's chance its own rank's alone, not the path's product": PLANNER_BLOCK.format(
            **{**RIGHT_PLANNER, "above": "1.0", "own": "1.0"}),
        "one depth limit past max_depth": PLANNER_BLOCK.format(**{**RIGHT_PLANNER, "depths": "max_depth + 2"}),
        "never a baseline step []": PLANNER_BLOCK.format(**{**RIGHT_PLANNER, "start": "None, -1"}),
    }),
    "07 acceptance is 1 - TV": Exercise("07_beyond_the_paper", "the sum of min(p, q)", SETUP_07, {
        "the identity, not the quantities": "acceptance, disagree, total_variation = 1.0, p > q, 0.0",
        "the L1 distance, not halved": (
            "acceptance = torch.minimum(p, q).sum().item()\ndisagree = p > q\n"
            "total_variation = (p - q).abs().sum().item()"),
        "TV from the identity, with no set": (
            "acceptance = torch.minimum(p, q).sum().item()\ndisagree = torch.zeros_like(p, dtype=torch.bool)\n"
            "total_variation = 1 - acceptance"),
        "the set where q gives more": (
            "acceptance = torch.minimum(p, q).sum().item()\ndisagree = q > p\n"
            "total_variation = abs((p[disagree].sum() - q[disagree].sum()).item())"),
        "the tokens both give much to": (
            "acceptance = torch.minimum(p, q).sum().item()\ndisagree = (p > 0.01) & (q > 0.01)\n"
            "total_variation = 1 - acceptance"),
        "the overlap of the wrong pair": (
            "acceptance = torch.maximum(p, q).sum().item() - 1\ndisagree = p > q\ntotal_variation = 1 - acceptance"),
        "the acceptance from the identity, 1 - TV": (
            "disagree = p > q\ntotal_variation = (p[disagree].sum() - q[disagree].sum()).item()\n"
            "acceptance = 1 - total_variation"),
        "TV from the identity, with the right set": (
            "acceptance = torch.minimum(p, q).sum().item()\ndisagree = p > q\ntv = 1 - acceptance\n"
            "total_variation = tv"),
           "the acceptance as 1 - TV written out": (
            "disagree = p > q\nacceptance = 1 - (p[disagree].sum() - q[disagree].sum()).item()\n"
            "total_variation = (p[disagree].sum() - q[disagree].sum()).item()"),
    }, from_block=True),
    "02 a recorded forward (optional)": Exercise("02_why_decoding_is_slow", "fill one, replay, copy the other",
                                                 SETUP_02_GRAPH, {
        "the input renamed, not written in place": "static_ids = ids\ngraph.replay()\nreturn static_logits.clone()",
        "the output handed out, not copied": "static_ids.copy_(ids)\ngraph.replay()\nreturn static_logits",
        "no replay": "static_ids.copy_(ids)\nreturn static_logits.clone()",
        "replayed before the new ids are in": "graph.replay()\nstatic_ids.copy_(ids)\nreturn static_logits.clone()",
    }),
    "08 the feature draft's forward": Exercise("08_feature_drafts", "join them after the features", SETUP_08_FORWARD, {
        "the embedding first": FEATURE_FORWARD_BLOCK.format(
            **{**RIGHT_FEATURE_FORWARD, "project": "draft.fc(torch.cat([embedded, features], dim=-1))"}),
        "added, not joined and projected": FEATURE_FORWARD_BLOCK.format(
            **{**RIGHT_FEATURE_FORWARD, "project": "features + embedded"}),
        "the head on the layer's input": FEATURE_FORWARD_BLOCK.format(**{**RIGHT_FEATURE_FORWARD, "head": "x"}),
        "no layer: the projection taken for the prediction": FEATURE_FORWARD_BLOCK.format(
            **{**RIGHT_FEATURE_FORWARD, "layer": "x"}),
    }),
    "08 EAGLE's training loss": Exercise("08_feature_drafts", "the rows read features[:, :-1]", SETUP_08_LOSS, {
        "scored against the feature read": LOSS_BLOCK.format(**{**RIGHT_LOSS, "wanted": "features[:, :-1]"}),
        "the token read is the feature's own": LOSS_BLOCK.format(**{**RIGHT_LOSS, "after": "tokens[:, :-1]"}),
        "padding counted": LOSS_BLOCK.format(**{**RIGHT_LOSS, "total": "(regression + token_weight * cross).mean()"}),
        "hard labels: the target's top token only": LOSS_BLOCK.format(**{**RIGHT_LOSS, "cross": (
            "-torch.log_softmax(logits, -1).gather(-1, target_dist.argmax(-1, keepdim=True)).squeeze(-1)")}),
        "squared error for the features": LOSS_BLOCK.format(
            **{**RIGHT_LOSS, "regression": 'F.mse_loss(predicted, wanted, reduction="none").mean(-1)'}),
        "the regression weighted too": LOSS_BLOCK.format(
            **{**RIGHT_LOSS, "total": "(token_weight * (regression + cross) * pairs).sum() / pairs.sum()"}),
        "the cross-entropy under no_grad (no gradient from the tokens)": LOSS_BLOCK.format(**RIGHT_LOSS).replace(
            "\ncross = ", "\n    cross = "),
        "the regression under no_grad (no gradient from the features)": LOSS_BLOCK.format(**RIGHT_LOSS).replace(
            "regression = F.smooth", "with torch.no_grad():\n    regression = F.smooth"),
    }),
    "08 acceptance by depth": Exercise("08_feature_drafts", "depth d is reached when the step drafted", SETUP_08_DEPTH, {
        "over every step, reached or not": (
            "return [sum(a >= d for p, a in steps) / len(steps) for d in range(1, gamma + 1)]"),
        "the short drafts counted as reached": (
            "shares = []\n"
            "for d in range(1, gamma + 1):\n"
            "    reached = [a for p, a in steps if a >= d - 1]\n"
            "    shares.append(sum(a >= d for a in reached) / len(reached) if reached else 0.0)\n"
            "return shares"),
        "reached one level too deep": (
            "shares = []\n"
            "for d in range(1, gamma + 1):\n"
            "    reached = [a for p, a in steps if p >= d and a >= d]\n"
            "    shares.append(sum(a >= d for a in reached) / len(reached) if reached else 0.0)\n"
            "return shares"),
        "1.0 where no step reached the depth": (
            "shares = []\n"
            "for d in range(1, gamma + 1):\n"
            "    reached = [a for p, a in steps if p >= d and a >= d - 1]\n"
            "    shares.append(sum(a >= d for a in reached) / len(reached) if reached else 1.0)\n"
            "return shares"),
    }),
    "08 which draft wins": Exercise("08_feature_drafts", "a product of the acceptances down to each depth",
                                    SETUP_08_WINNER, {
        "a geometric series in the first depth's acceptance": WINNER_BLOCK.format(
            **{**RIGHT_WINNER, "tokens": "1 + sum(accept[0] ** depth for depth in range(1, GAMMA + 1))"}),
        "the acceptances added, not multiplied": WINNER_BLOCK.format(
            **{**RIGHT_WINNER, "tokens": "1 + sum(accept[:GAMMA])"}),
        "the verification as one forward": WINNER_BLOCK.format(**{**RIGHT_WINNER, "cost": "GAMMA * c[drafter_name] + 1"}),
        "the draft's cost forgotten": WINNER_BLOCK.format(**{**RIGHT_WINNER, "cost": "r"}),
    }, from_block=True),
}


def exercise_cells(ex: Exercise) -> tuple[str, str, object]:
    """The exercise's cell (from its solution block on, for ``from_block``), its check cell, and its block."""
    nb = nbformat.read(TUTORIALS / f"{ex.notebook}.ipynb", as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    k = next(i for i, s in enumerate(cells) if any(ex.hint in b.hint + b.more for b in solution_blocks(s)))
    source = cells[k]
    if ex.from_block:
        first = next(b.first for b in solution_blocks(source) if ex.hint in b.hint + b.more)
        source = "\n".join(source.split("\n")[first:])
    block, = [b for b in solution_blocks(source) if ex.hint in b.hint + b.more]
    checks = next(s for s in cells[k + 1:] if "check(" in s)
    return source, checks, block


def run_exercise(ex: Exercise, replacement=None, stub: bool = False, checks_too: bool = True) -> dict:
    """The exercise's cell (its solution, or ``replacement`` in the block's place), then its checks; with
    ``stub``, the student edition's setup line, exercise cell and check cell.  Returns the namespace."""
    source, checks, block = exercise_cells(ex)
    namespace: dict = {}
    exec(ex.setup, namespace)
    if stub:
        imports, source, checks = student_cells(ex)
        exec(imports, namespace)
    elif replacement is not None:
        lines = source.split("\n")
        lines[block.first:block.last + 1] = [block.indent + line for line in replacement.split("\n")]
        source = "\n".join(lines)
    namespace["In"] = ["", source]  # IPython's history of the cells run, which notebook.computed_from reads
    exec(source, namespace)
    if checks_too:
        exec(checks, namespace)
    return namespace


def student_cells(ex: Exercise) -> tuple[str, str, str]:
    """The student edition of a notebook's setup cell (its import line), of the exercise's cell and of its
    check cell."""
    source, checks, _ = exercise_cells(ex)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in ("from sdd_edu.notebook import check", source, checks)]
    return tuple(c.source for c in student_edition(nb).cells)


@pytest.mark.parametrize("name", EXERCISES)
def test_the_solution_passes_and_the_stub_fails(name):
    run_exercise(EXERCISES[name])
    with pytest.raises((NotImplementedError, AssertionError)):
        run_exercise(EXERCISES[name], stub=True)


@pytest.mark.parametrize("name", EXERCISES)
def test_the_student_edition_runs_on_the_fallback_and_its_check_says_unsolved(name, capsys):
    ex = EXERCISES[name]
    imports, cell, checks = student_cells(ex)
    exercise_name = re.match(r'solved\("(.+)"\)\n', checks).group(1)
    assert cell.startswith(f'exercise("{exercise_name}")\n') and f'unsolved("{exercise_name}", lambda: ' in cell
    namespace: dict = {}
    exec(ex.setup, namespace)
    exec(imports, namespace)
    exec(cell, namespace)  # the stub's cell runs: the fallback gives its values
    with pytest.raises(AssertionError, match=f"^✗ exercise '{re.escape(exercise_name)}' is not solved yet"):
        exec(checks, namespace)
    # without its solved line the check cell passes: the fallback is a right answer, and later cells work
    exec(checks.split("\n", 1)[1], namespace)
    notice = f"⚠ exercise '{exercise_name}' is not solved yet: the cells below use sdd-edu's own answer"
    assert capsys.readouterr().out.count(notice) == 1  # once, whether the stub ran in its cell or in the checks
    # the solution written in the student's cell (its first line kept), the cell run again: the checks pass
    run_cell(cell.split("\n", 1)[0] + "\n" + exercise_cells(ex)[0], namespace, f"<{name} solved>")
    exec(checks, namespace)
    assert notice not in capsys.readouterr().out


def run_cell(source: str, namespace: dict, filename: str) -> None:
    """Run ``source`` as a kernel runs a cell: its text kept in linecache under the code's file name, where
    ``exercise(...)`` reads which names the cell uses."""
    import linecache

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)


@pytest.mark.parametrize("name, mutant", [(n, m) for n, ex in EXERCISES.items() for m in ex.mutants])
def test_a_plausible_wrong_answer_fails_the_checks(name, mutant):
    ex = EXERCISES[name]
    with pytest.raises(AssertionError, match="✗"):
        run_exercise(ex, ex.mutants[mutant])


# ----------------------------------------------------------------------------- the grader's hidden tests

def exercise_name(ex: Exercise) -> str:
    return re.match(r'exercise\("(.+)"\)\n', student_cells(ex)[1]).group(1)


HIDDEN_CASES = {name: ex for name, ex in EXERCISES.items()
                if any(h.notebook == ex.notebook[:2] and h.name == exercise_name(ex) for h in HIDDEN)}


def test_every_function_exercise_has_hidden_tests():
    """The exercises in which the student writes a function are the ones the grader tests on unseen inputs."""
    functions = {(ex.notebook[:2], exercise_name(ex)) for ex in EXERCISES.values()
                 if re.search(rf"^\s*def {re.escape(exercise_name(ex))}\(", exercise_cells(ex)[0], re.M)}
    assert functions == {(h.notebook, h.name) for h in HIDDEN}


@pytest.mark.parametrize("name", HIDDEN_CASES)
def test_the_hidden_tests_pass_the_solution_and_fail_the_stub(name):
    ex = HIDDEN_CASES[name]
    number, exercise = ex.notebook[:2], exercise_name(ex)
    assert hidden_results(number, run_exercise(ex, checks_too=False))[exercise] == {"passed": True, "note": ""}
    imports, cell, _ = student_cells(ex)
    namespace: dict = {}
    exec(ex.setup, namespace)
    exec(imports, namespace)
    exec(cell, namespace)
    result = hidden_results(number, namespace)[exercise]
    assert not result["passed"] and result["note"].startswith("not solved")


@pytest.mark.parametrize("name, mutant", [(n, m) for n, ex in HIDDEN_CASES.items() for m in ex.mutants])
def test_the_hidden_tests_reject_the_mutants_too(name, mutant):
    ex = HIDDEN_CASES[name]
    result = hidden_results(ex.notebook[:2], run_exercise(ex, ex.mutants[mutant], checks_too=False))
    assert not result[exercise_name(ex)]["passed"], result


@pytest.mark.parametrize("name", HIDDEN_CASES)
def test_a_function_that_calls_the_course_answer_scores_nothing(name):
    """The student edition imports sdd_edu.course for the stubs' fallbacks: a function that returns the course's
    answer itself fails its solved(...) line and the hidden tests."""
    ex = dataclasses.replace(HIDDEN_CASES[name], setup=HIDDEN_CASES[name].setup + "\nfrom sdd_edu import course\n")
    block = exercise_cells(ex)[2]
    assert "course." in block.fallback
    namespace = run_exercise(ex, block.fallback, checks_too=False)
    result = hidden_results(ex.notebook[:2], namespace)[exercise_name(ex)]
    assert not result["passed"] and "course" in result["note"], result
    with pytest.raises(AssertionError, match="calls sdd_edu.course"):
        exec(f'from sdd_edu.notebook import solved\nsolved("{exercise_name(ex)}")', namespace)


def test_a_loop_that_calls_model_forward_passes_the_checks_and_the_hidden_tests():
    """The forwards are counted through the model's own forward, which model(...) and model.forward(...) both
    reach: a right answer written the second way is not rejected."""
    from sdd_edu.grade import HIDDEN

    ex = EXERCISES["01 greedy decoding with the cache"]
    by_forward = LOOP_BLOCK.replace("model(", "model.forward(").format(
        **{**RIGHT_LOOP, "step": "model.forward(torch.tensor([[new[-1]]]), cache)[0, -1]"})
    assert "model(" not in by_forward
    ns = run_exercise(ex, by_forward)
    hidden, = [h for h in HIDDEN if h.name == "greedy_with_cache"]
    hidden.test(ns["greedy_with_cache"], ns)


def test_a_copy_kept_as_a_tuple_passes_the_stream_checks():
    """A batch kept as a tuple is a copy too: the checks compare the tokens, not the container."""
    run_exercise(EXERCISES["00 a streaming callback"], "batches.append(tuple(ids))")


def is_function_exercise(ex: Exercise) -> bool:
    return bool(re.search(rf"^\s*def {re.escape(exercise_name(ex))}\(", exercise_cells(ex)[0], re.M))


@pytest.mark.parametrize("name", [n for n, ex in EXERCISES.items() if not is_function_exercise(ex)])
def test_a_cell_that_writes_the_course_answer_in_place_of_the_stub_is_not_solved(name):
    """Outside a function, deleting the unsolved(...) wrapper and keeping the course's call does not count."""
    ex = EXERCISES[name]
    imports, cell, checks = student_cells(ex)
    block = exercise_cells(ex)[2]
    lines = cell.split("\n")
    stub = next(k for k, line in enumerate(lines) if "unsolved(" in line)
    lines[stub] = block.indent + block.fallback
    namespace: dict = {}
    exec(ex.setup, namespace)
    exec(imports, namespace)
    run_cell("\n".join(lines), namespace, f"<{name} with the course's call>")
    with pytest.raises(AssertionError, match=f"^✗ exercise '{re.escape(exercise_name(ex))}' calls sdd_edu.course"):
        exec(checks, namespace)


MOVED_INPUTS = {"the input's storage swapped, not written": "static_ids.set_(ids)",
                "the input's data rebound": "static_ids.data = ids"}


@pytest.mark.parametrize("mutant", MOVED_INPUTS)
def test_a_recorded_forward_whose_input_moved_is_refused(mutant):
    """On a CPU the stand-in for a CUDA graph would read the moved input; a real graph reads the old address.
    The replay refuses, in the notebook's cell and in the hidden test alike."""
    ex = EXERCISES["02 a recorded forward (optional)"]
    code = f"{MOVED_INPUTS[mutant]}\ngraph.replay()\nreturn static_logits.clone()"
    with pytest.raises(RuntimeError, match="moved to other memory"):
        run_exercise(ex, code)
    source, _, block = exercise_cells(ex)
    lines = source.split("\n")
    lines[block.first:block.last + 1] = [block.indent + line for line in code.split("\n")]
    definition = "\n".join(lines[:lines.index("", block.last)])  # the function alone, not the cell's calls
    namespace: dict = {}
    exec(ex.setup, namespace)
    exec(definition, namespace)
    result = hidden_results("02", namespace)["run_recorded"]
    assert not result["passed"] and "moved to other memory" in result["note"], result
