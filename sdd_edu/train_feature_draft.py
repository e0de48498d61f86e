"""Train the embedded feature draft: ``python -m sdd_edu.train_feature_draft {data,train,eval,export}``.

EAGLE's recipe in miniature (``sdd_edu.feature_draft``): one decoder layer learns to predict the
target's next feature from its current one and the next token.  Steps, each resumable:

  data    the target's own continuations of the same standard-library prompts as the small draft's
          (never HumanEval), with the target's features at every position of prompt and continuation,
          stored in 16 bits;
  train   the layer and its projection (the target's embedding and head stay frozen and are not
          shipped); loss = smooth-L1 on the features + 0.1 x cross-entropy to the target's token
          distribution (EAGLE-1), the features read with uniform noise;
  eval    top-1 / top-4 agreement with the target along its own greedy HumanEval continuations, by the
          same positions as the small draft's model card, and the cost of one forward;
  export  fp16 weights into the package, and the model card.

Both ``data`` and ``train`` stop with ``--minutes`` and resume where they stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .errors import SddError
from .feature_draft import FeatureDraft, feature_draft_config, feature_loss, load_feature_draft, save_feature_draft
from .loading import LoadedModel, cache_dir, load_model
from .sampling import Sampling

ASSET_DIR = Path(__file__).parent / "assets" / "feature-draft-smollm2"
CHECK_TOKENS = 48  # the continuation length of the shipped weights' check (check.json)


# ----------------------------------------------------------------------------- data

def write_feature_shard(path: Path, sequences: list[np.ndarray], features: list[np.ndarray]) -> None:
    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, lengths=lengths, tokens=np.concatenate(sequences).astype(np.int32),
             features=np.concatenate(features).astype(np.float16))
    tmp.replace(path)


def read_feature_shards(folder: Path, limit: int = 0):
    """(tokens (L,), features (L, d) fp16) per sequence, from every shard in ``folder``."""
    out = []
    for path in sorted(Path(folder).glob("shard-*.npz")):
        z = np.load(path)
        bounds = np.concatenate([[0], np.cumsum(z["lengths"])])
        tokens, features = z["tokens"], z["features"]
        for i in range(len(bounds) - 1):
            out.append((tokens[bounds[i]:bounds[i + 1]].astype(np.int64), features[bounds[i]:bounds[i + 1]]))
            if limit and len(out) >= limit:
                return out
    return out


def collect(target: LoadedModel, prompts: list[list[int]], new_tokens: int, sampling: Sampling,
            generator: torch.Generator):
    """Continuations of a batch of prompts and the target's features along prompt + continuation."""
    from .draft_data import generate_batch

    tokens, _, _, feats = generate_batch(target, prompts, new_tokens, sampling, generator, keep_top=1, features=True)
    T = max(len(p) for p in prompts)
    sequences, features = [], []
    for b, prompt in enumerate(prompts):
        sequences.append(np.concatenate([np.asarray(prompt), tokens[b].numpy()]))
        features.append(feats[b, T - len(prompt):].numpy())  # drop the left padding
    return sequences, features


def cmd_data(args) -> None:
    from tqdm.auto import tqdm

    from .draft_data import prompt_batches

    out = Path(args.work) / "data"
    out.mkdir(parents=True, exist_ok=True)
    target = load_model("embedded", dtype=args.dtype)
    encoded, batches = prompt_batches(target, args.batch, args.max_prompt_tokens, args.limit)
    sampling = Sampling(temperature=args.temperature, top_k=50)
    deadline = time.time() + 60 * args.minutes if args.minutes else float("inf")
    done = {p.name for p in out.glob("shard-*.npz")}
    bar = tqdm(total=len(batches), desc="target continuations + features", unit="batch", initial=len(done))
    for b, idx in enumerate(batches):
        name = f"shard-{b:05d}.npz"
        if name in done:
            continue
        if time.time() > deadline:
            break
        sequences, features = collect(target, [encoded[i] for i in idx], args.new_tokens, sampling,
                                      torch.Generator().manual_seed(1000 + b))
        write_feature_shard(out / name, sequences, features)
        bar.update(1)
    bar.close()
    print(f"{len(list(out.glob('shard-*.npz')))} shards in {out}")


# ----------------------------------------------------------------------------- training

def length_batches(lengths: list[int], tokens_per_batch: int, rng: random.Random) -> list[list[int]]:
    """Sequences of similar length together, at most ``tokens_per_batch`` tokens with padding, shuffled."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, cur, longest = [], [], 0
    for i in order:
        if cur and max(longest, lengths[i]) * (len(cur) + 1) > tokens_per_batch:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, lengths[i])
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def pad_batch(examples, idx):
    """tokens (B, L), features (B, L, d) float32, valid (B, L): right-padded (causal attention never sees it)."""
    L = max(len(examples[i][0]) for i in idx)
    d = examples[idx[0]][1].shape[-1]
    tokens = torch.zeros(len(idx), L, dtype=torch.long)
    features = torch.zeros(len(idx), L, d)
    valid = torch.zeros(len(idx), L, dtype=torch.bool)
    for b, i in enumerate(idx):
        t, f = examples[i]
        tokens[b, :len(t)] = torch.from_numpy(t)
        features[b, :len(t)] = torch.from_numpy(f.astype(np.float32))
        valid[b, :len(t)] = True
    return tokens, features, valid


def frequent_head(folder_or_examples, vocab_size: int, head_size: int) -> torch.Tensor:
    """The head's token ids: the small draft's (the same frequent tokens), else the data's most frequent."""
    from .loading import DRAFT_ASSET

    config = DRAFT_ASSET / "sdd_config.json"
    if config.exists():
        from safetensors import safe_open

        with safe_open(str(DRAFT_ASSET / "model.safetensors"), "pt") as f:
            ids = f.get_tensor("head_ids")
        if len(ids) == head_size:
            return ids.long()
    counts = np.zeros(vocab_size)
    for tokens, _ in folder_or_examples:
        np.add.at(counts, tokens, 1.0)
    return torch.from_numpy(np.sort(np.argsort(-counts, kind="stable")[:head_size]))


def train_steps(draft: FeatureDraft, examples, steps: int, lr: float, batch_tokens: int, seed: int = 0,
                noise: float = 0.2, token_weight: float = 0.1, state: dict | None = None, deadline: float = math.inf,
                bf16: bool = False, on_step=None, unroll: int = 1) -> dict:
    """Train ``draft`` (attached to a frozen target) for up to ``steps`` AdamW steps; resumable through ``state``.

    ``state`` holds the optimizer, the step, the epoch, the seconds trained and the history of the loss."""
    state = state if state is not None else {}
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    if "optimizer" in state:
        opt.load_state_dict(state["optimizer"])
    step, epoch = state.get("step", 0), state.get("epoch", 0)
    history = state.setdefault("curve", [])
    lengths = [len(t) for t, _ in examples]
    batches = length_batches(lengths, batch_tokens, random.Random(seed + epoch))
    generator = torch.Generator().manual_seed(seed + step)
    warm = min(50, max(1, steps // 10))

    def lr_at(s):
        if s < warm:
            return lr * (s + 1) / warm
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, steps - warm)))))

    draft.train()
    while step < steps and time.time() < deadline:
        t0 = time.time()
        tokens, features, valid = pad_batch(examples, batches[step % len(batches)])
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, parts = feature_loss(draft, features, tokens, valid, token_weight, noise, generator, unroll)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        state["seconds"] = state.get("seconds", 0.0) + time.time() - t0
        history.append({"step": step, "loss": loss.item(), **parts})
        if on_step:
            on_step(step, loss.item(), parts)
        if step % len(batches) == 0:
            epoch += 1
            batches = length_batches(lengths, batch_tokens, random.Random(seed + epoch))
    draft.eval()
    state.update(optimizer=opt.state_dict(), step=step, epoch=epoch)
    return state


def cmd_train(args) -> None:
    from tqdm.auto import tqdm

    work = Path(args.work)
    ckpt_path = work / "checkpoint.pt"
    examples = read_feature_shards(work / "data", args.limit)
    if not examples:
        raise SddError(f"no training data in {work / 'data'}; run the 'data' step first")
    target = load_model("embedded", dtype="fp32")
    target.model.requires_grad_(False)
    torch.manual_seed(0)
    draft = FeatureDraft(feature_draft_config(target.config, args.head_size))
    if args.head_size:
        draft.head_ids.copy_(frequent_head(examples, target.config.vocab_size, args.head_size))
    draft.attach(target.model)
    state = {}
    if ckpt_path.exists():
        saved = torch.load(ckpt_path, weights_only=False)
        draft.load_state_dict(saved.pop("model"))
        state = saved
        print(f"resumed at step {state['step']} ({state.get('seconds', 0) / 60:.1f} min trained)")
    n_tokens = sum(len(t) for t, _ in examples)
    steps = args.epochs * len(length_batches([len(t) for t, _ in examples], args.batch_tokens, random.Random(0)))
    print(f"feature draft: {draft.num_parameters / 1e6:.2f}M parameters; {len(examples)} sequences, "
          f"{n_tokens / 1e3:.0f}k tokens; {steps} steps")
    bar = tqdm(total=steps, initial=state.get("step", 0), desc="train feature draft", unit="step")

    def on_step(step, loss, parts):
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", top1=f"{parts['top1']:.2f}")

    deadline = time.time() + 60 * args.minutes if args.minutes else math.inf
    # one record per training session, for the model card: a resumed run may use other settings
    session = {"from_step": state.get("step", 0), "lr": args.lr, "batch_tokens": args.batch_tokens,
               "noise": args.noise, "unroll": args.unroll, "token_weight": args.token_weight,
               "sequences": len(examples), "tokens": n_tokens,
               "bf16": args.bf16, "seconds_before": state.get("seconds", 0.0)}
    sessions = state.setdefault("sessions", [])
    while state.get("step", 0) < steps and time.time() < deadline:  # a checkpoint every few minutes
        state = train_steps(draft, examples, steps, args.lr, args.batch_tokens, noise=args.noise, state=state,
                            deadline=min(deadline, time.time() + 60 * args.save_minutes), bf16=args.bf16,
                            on_step=on_step, unroll=args.unroll, token_weight=args.token_weight)
        state["settings"] = {"lr": args.lr, "batch_tokens": args.batch_tokens, "noise": args.noise,
                             "sequences": len(examples), "tokens": n_tokens, "bf16": args.bf16}
        record = {**session, "to_step": state["step"],
                  "minutes": (state["seconds"] - session["seconds_before"]) / 60}
        state["sessions"] = sessions + [record]
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({**state, "model": draft.state_dict(), "config": draft.config.to_dict()}, tmp)
        tmp.replace(ckpt_path)
    bar.close()
    print(f"saved {ckpt_path} at step {state['step']}/{steps} after {state['seconds'] / 60:.1f} min of training")


def load_checkpoint(work: Path, target) -> FeatureDraft:
    from .model import ModelConfig

    saved = torch.load(Path(work) / "checkpoint.pt", weights_only=False, map_location="cpu")
    draft = FeatureDraft(ModelConfig(**saved["config"]))
    draft.load_state_dict(saved["model"])
    return draft.eval().requires_grad_(False).attach(target.model)


# ----------------------------------------------------------------------------- evaluation and export

@torch.inference_mode()
def feature_agreement(target: LoadedModel, draft: FeatureDraft, prompts: int = 20, new_tokens: int = 64,
                      start: int = 0, ks=(1, 4)) -> dict:
    """Fraction of the target's greedy continuation tokens that are the feature draft's top-1 (top-k), each
    predicted from the target's features and tokens before it: the positions of ``greedy_agreement``."""
    from .data import humaneval_prompts
    from .decoding.baseline import baseline_decode

    hits, total = {k: 0 for k in ks}, 0
    for _, text in humaneval_prompts(prompts, start=start):
        ids = target.encode(text)
        cont = baseline_decode(target, ids, new_tokens, stop_at_eos=False).token_ids
        seq = torch.tensor([ids + cont], device=target.device)
        _, feats = target.model(seq, features=True)  # (1, L, d)
        # row i reads (f_i, token_{i+1}) and predicts token_{i+2}: continuation token j comes from row j - 2
        logits, _ = draft(feats[:, :-1], seq[:, 1:])
        logits = logits[0, len(ids) - 2:len(ids) - 2 + len(cont)]
        top = torch.topk(logits, max(ks), dim=-1).indices
        if draft.config.head_size:
            top = draft.head_ids[top]
        truth = torch.tensor(cont, device=top.device)
        for k in ks:
            hits[k] += int((top[:, :k] == truth[:, None]).any(-1).sum())
        total += len(cont)
    return {f"top{k}": hits[k] / total for k in ks} | {"positions": total, "prompts": prompts}


@torch.inference_mode()
def feature_forward_cost(draft: FeatureDraft, context: int = 256, repeats: int = 20) -> float:
    """Median seconds of one cached feature-draft forward over one new position after ``context`` cached."""
    from .measure.timing import median, time_call

    d = draft.config.d_model
    cache = draft.new_cache(context + 1)
    draft(torch.randn(1, context, d, dtype=draft.dtype, device=draft.device),
          torch.randint(0, 1000, (1, context), device=draft.device), cache)
    f = torch.randn(1, 1, d, dtype=draft.dtype, device=draft.device)
    x = torch.randint(0, 1000, (1, 1), device=draft.device)

    def step():
        draft(f, x, cache)
        cache.truncate(context)

    return median(time_call(step, draft.device, repeats=repeats, warmup=3))


def curve_table(curve: list[dict], rows: int = 12) -> str:
    """The training curve as a markdown table: ``rows`` points, each the mean of the steps since the last."""
    if not curve:
        return "(no training steps recorded)"
    edges = np.linspace(0, len(curve), min(rows, len(curve)) + 1).astype(int)
    lines = ["| steps | loss | feature error (smooth L1) | token cross-entropy | top-1 on the batch |",
             "|---|---:|---:|---:|---:|"]
    for a, b in zip(edges[:-1], edges[1:]):
        part = curve[a:b]
        mean = {k: sum(r[k] for r in part) / len(part) for k in ("loss", "regression", "tokens", "top1")}
        lines.append(f"| {part[0]['step']}-{part[-1]['step']} | {mean['loss']:.3f} | {mean['regression']:.3f} | "
                     f"{mean['tokens']:.2f} | {mean['top1']:.3f} |")
    return "\n".join(lines)


def sessions_text(saved: dict) -> str:
    """The checkpoint's training sessions, in words."""
    return "".join(f"; steps {r['from_step']}-{r['to_step']}: {r['minutes']:.0f} min, peak learning rate {r['lr']}, "
                   f"unroll {r['unroll']}, noise {r['noise']}, token weight {r.get('token_weight', 0.1)}"
                   for r in saved.get("sessions", []))


def weights_note(saved: dict) -> str:
    """A line under the curve where sessions weighted the tokens differently (the loss column then jumps)."""
    weights = [(r["from_step"], r.get("token_weight", 0.1)) for r in saved.get("sessions", [])]
    if len({w for _, w in weights}) < 2:
        return ""
    changes = [f"from step {step + 1}: w = {w}" for i, (step, w) in enumerate(weights)
               if i == 0 or w != weights[i - 1][1]]
    return ("\nThe loss column weights the cross-entropy by its session's w (" + "; ".join(changes)
            + "), so it jumps where w changes; the feature error and the cross-entropy columns compare throughout.\n")


def write_model_card(result: dict, work: Path, path: Path) -> None:
    """The feature draft's model card, from the checkpoint's training record and a fresh evaluation."""
    from .measure.timing import device_description

    saved = torch.load(Path(work) / "checkpoint.pt", weights_only=False, map_location="cpu")
    c, settings = saved["config"], saved.get("settings", {})
    size = (ASSET_DIR / "model.safetensors").stat().st_size if (ASSET_DIR / "model.safetensors").exists() else 0
    small = result.get("small_draft")
    agreement = (f"top-1 {result['top1']:.3f}, top-4 {result['top4']:.3f}"
                 + (f" (the small draft, same positions: top-1 {small['top1']:.3f}, top-4 {small['top4']:.3f})"
                    if small else ""))
    path.write_text(f"""# smollm2-feature-draft: the feature draft (EAGLE) of the embedded ladder

One decoder layer that drafts for SmolLM2-135M-Instruct from the target's own features
(`sdd_edu/feature_draft.py`): at each position it joins the target's normalised hidden state with the
embedding of the next token, projects the pair to width {c['d_model']}, runs one layer of the target's kind
and predicts the target's next hidden state; the target's head, reduced to the {c['head_size']} tokens the small
draft's head covers (extended at run time with the prompt's tokens), gives the distribution.  Deeper in a
tree the layer reads its own predicted features.  The token embedding and the head are the target's,
so the shipped weights hold only the projection and the layer.

| | |
|---|---|
| architecture | fc {2 * c['d_model']} -> {c['d_model']}, 1 layer, {c['n_head']} heads ({c['n_kv_head']} key/value), MLP {c['d_ff']}, RoPE, RMSNorm, SwiGLU |
| parameters | {result['draft_parameters'] / 1e6:.2f}M of its own (embedding and head read from the target) |
| weights shipped | {size / 1e6:.1f} MB (fp16 safetensors) |
| training data | {settings.get('sequences', '?')} sequences ({settings.get('tokens', 0) / 1e3:.0f}k tokens): signature + docstring prompts from the Python standard library's documented functions (never HumanEval) and the target's own continuations of them, sampled at temperature 0.7 (top-k 50), with the target's features at every position stored in fp16 |
| objective | smooth-L1 between predicted and true features + w x cross-entropy to the target's distribution over the head's tokens (EAGLE-1: w = 0.1; each session's w under training); the features read carry uniform noise of half-width {settings.get('noise', '?')}; with unroll k, k passes, each reading the previous pass's predicted features (`feature_loss`) |
| training | {saved['step']} AdamW steps ({saved['epoch']} full epochs), batches of up to {settings.get('batch_tokens', '?')} tokens, {saved.get('seconds', 0) / 60:.0f} minutes on {device_description(torch.device('cpu'))}{sessions_text(saved)} |
| greedy agreement with the target | {agreement}, along the target's own greedy continuations ({result['positions']} positions, HumanEval/0 to HumanEval/{result['prompts'] - 1}, {result['new_tokens']} tokens each; `sdd_edu.train_feature_draft.feature_agreement`, the positions of the small draft's card) |
| cost of one forward | {result['draft_ms']:.2f} ms against {result['target_ms']:.1f} ms for the target ({result['cost_ratio']:.3f} of it), one new position after 256 cached, fp32, {result['threads']} threads |

## Training curve

Means over consecutive stretches of steps, on the training batches (the whole curve: `training-curve.json`).

{curve_table(saved.get('curve', []))}
{weights_note(saved)}
Reproduce: `python -m sdd_edu.train_feature_draft data`, `train`, `export`, `eval --compare --card`.
""")


def cmd_eval(args) -> dict:
    from .measure.agreement import forward_cost, greedy_agreement

    target = load_model("embedded")
    draft = load_feature_draft(ASSET_DIR, target.model) if args.shipped else load_checkpoint(Path(args.work), target)
    result = feature_agreement(target, draft, prompts=args.prompts, new_tokens=args.new_tokens)
    t_target, t_draft = forward_cost(target), feature_forward_cost(draft)
    result.update(target_ms=1000 * t_target, draft_ms=1000 * t_draft, cost_ratio=t_draft / t_target,
                  draft_parameters=draft.num_parameters, threads=torch.get_num_threads(), new_tokens=args.new_tokens)
    if args.compare:
        small = load_model("smollm2-draft")
        result["small_draft"] = greedy_agreement(target, small, prompts=args.prompts, new_tokens=args.new_tokens)
    print(json.dumps(result, indent=1))
    (Path(args.work) / "eval.json").write_text(json.dumps(result, indent=1))
    if args.card:
        write_model_card(result, Path(args.work), ASSET_DIR / "MODEL_CARD.md")
        # two prompts' agreement, which the test suite recomputes from the shipped weights
        check = feature_agreement(target, draft, prompts=2, new_tokens=CHECK_TOKENS)
        (ASSET_DIR / "check.json").write_text(json.dumps(check, indent=1))
        print(f"wrote {ASSET_DIR / 'MODEL_CARD.md'} and check.json ({check})")
    return result


def cmd_export(args) -> None:
    target = load_model("embedded")
    draft = load_checkpoint(Path(args.work), target)
    save_feature_draft(draft, ASSET_DIR)
    saved = torch.load(Path(args.work) / "checkpoint.pt", weights_only=False, map_location="cpu")
    curve = saved.get("curve", [])
    (ASSET_DIR / "training-curve.json").write_text(json.dumps(
        [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
         for row in curve[::max(1, len(curve) // 200)]]))
    size = (ASSET_DIR / "model.safetensors").stat().st_size
    print(f"wrote {ASSET_DIR / 'model.safetensors'} ({size / 1e6:.1f} MB)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdd_edu.train_feature_draft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(cache_dir() / "feature-draft-work"), help="data and checkpoints")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="the target's continuations and features (resumable)")
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--max-prompt-tokens", type=int, default=160)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--minutes", type=float, default=0)
    p.add_argument("--limit", type=int, default=0, help="use only this many prompts")
    p.add_argument("--dtype", default="bf16")
    p = sub.add_parser("train", help="train the layer (resumes from the last checkpoint)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--unroll", type=int, default=1, help="passes that read the draft's own predicted features")
    p.add_argument("--token-weight", type=float, default=0.1,
                   help="weight of the token cross-entropy beside the feature regression (EAGLE-1: 0.1)")
    p.add_argument("--head-size", type=int, default=8192)
    p.add_argument("--limit", type=int, default=0, help="use only this many sequences")
    p.add_argument("--minutes", type=float, default=0)
    p.add_argument("--save-minutes", type=float, default=5)
    p.add_argument("--bf16", action="store_true")
    p = sub.add_parser("eval", help="agreement with the target on HumanEval, and the cost of one forward")
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--shipped", action="store_true")
    p.add_argument("--compare", action="store_true", help="the small draft's agreement too")
    p.add_argument("--card", action="store_true", help="write the model card with the results")
    sub.add_parser("export", help="fp16 weights and the training curve into the package")
    args = parser.parse_args(argv)
    try:
        {"data": cmd_data, "train": cmd_train, "eval": cmd_eval, "export": cmd_export}[args.command](args)
    except SddError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
