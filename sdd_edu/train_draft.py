"""Train the embedded draft model: ``python -m sdd_edu.train_draft {data,train,eval,export,samples}``.

The paper's recipe in miniature: a draft far smaller than the target, trained on the kind of
text the target writes.  Steps, each resumable:

  data    the target's own continuations of standard-library signature+docstring prompts,
          with its top-k probabilities at each position (``sdd_edu.draft_data``);
  train   a small Llama-family model (same tokenizer), embedding initialised from a PCA of the
          target's, loss = cross-entropy on the sampled tokens + KL to the target's top-k;
  eval    greedy agreement with the target along its own greedy HumanEval continuations
          (top-1 and top-4) and the cost of one draft forward relative to one target forward;
  export  fp16 weights for the package, and a standard Hugging Face ``LlamaForCausalLM`` folder;
  samples text sampled from the shipped draft, from which the trigram stage is fitted.

Time on a 2-core CPU (measured): ``data`` about 45 s per shard of 48 continuations; ``train`` about
9 s per step of 8k tokens with ``--bf16``, 11 s without.  Both stop with ``--minutes`` and resume
where they stopped, so a long run can span several sessions.  The shipped draft took 95 shards
(about 71 minutes) and 1243 steps (129 minutes); its model card lists the training sessions.  The
first version (2661 continuations, 680 steps in 34 minutes, within the two-hour budget) agreed with the target
0.493 top-1 and 0.683 top-4 against the shipped 0.562 and 0.752.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SddError
from .loading import LoadedModel, cache_dir, export_hf, load_model
from .model import ModelConfig, Transformer
from .sampling import Sampling

ASSET_DIR = Path(__file__).parent / "assets" / "draft-smollm2"


@dataclass
class DraftSpec:
    n_layer: int = 4
    d_model: int = 256
    n_head: int = 4
    n_kv_head: int = 2
    d_ff: int = 640
    max_seq_len: int = 2048
    head_size: int = 8192


def draft_config(target: ModelConfig, spec: DraftSpec) -> ModelConfig:
    return ModelConfig(family="llama", vocab_size=target.vocab_size, n_layer=spec.n_layer, n_head=spec.n_head,
                       n_kv_head=spec.n_kv_head, d_model=spec.d_model, d_ff=spec.d_ff,
                       max_seq_len=spec.max_seq_len, norm_eps=target.norm_eps, rope_theta=target.rope_theta,
                       tie_embeddings=True, bos_token_id=target.bos_token_id, eos_token_id=target.eos_token_id,
                       head_size=spec.head_size)


# ----------------------------------------------------------------------------- data

def cmd_data(args) -> None:
    from tqdm.auto import tqdm

    from .draft_data import generate_batch, prompt_batches, write_shard

    out = Path(args.work) / "data"
    out.mkdir(parents=True, exist_ok=True)
    target = load_model("embedded", dtype=args.dtype)
    encoded, batches = prompt_batches(target, args.batch, args.max_prompt_tokens, args.limit)
    sampling = Sampling(temperature=args.temperature, top_k=50)
    deadline = time.time() + 60 * args.minutes if args.minutes else float("inf")
    done = {p.name for p in out.glob("shard-*.npz")}
    done_here = sum(f"-p{args.max_prompt_tokens}-n{args.new_tokens}-" in name for name in done)
    bar = tqdm(total=len(batches), desc="target continuations", unit="batch", initial=done_here)
    for b, idx in enumerate(batches):
        name = f"shard-p{args.max_prompt_tokens}-n{args.new_tokens}-{b:05d}.npz"
        if name in done:
            continue
        if time.time() > deadline:
            break
        gen = torch.Generator().manual_seed(1000 + b)
        batch = [encoded[i] for i in idx]
        tokens, top_ids, top_probs = generate_batch(target, batch, args.new_tokens, sampling, gen)
        write_shard(out / name, batch, tokens, top_ids, top_probs)
        bar.update(1)
    bar.close()
    n = len(list(out.glob("shard-*.npz")))
    print(f"{n} shards of {args.batch} continuations x {args.new_tokens} tokens in {out}")


# ----------------------------------------------------------------------------- training

def pca_embedding(target: LoadedModel, dim: int) -> torch.Tensor:
    """The target's token embedding projected on its top ``dim`` principal directions (a warm start)."""
    emb = target.model.tok_emb.weight.detach().float().cpu()
    centered = emb - emb.mean(0, keepdim=True)
    sample = torch.randperm(len(centered), generator=torch.Generator().manual_seed(0))[:8192]
    _, _, v = torch.linalg.svd(centered[sample], full_matrices=False)  # principal directions of 8k rows
    reduced = centered @ v[:dim].T  # (V, dim)
    return reduced / reduced.std() * 0.02  # GPT-2's init scale: tied logits start near uniform


def load_examples(folder: Path, max_len: int):
    from .draft_data import read_shards

    examples = []
    for prompt, cont, top_ids, top_probs in read_shards(folder):
        prompt = prompt[-(max_len - len(cont)):]
        examples.append((prompt.astype(np.int64), cont.astype(np.int64), top_ids.astype(np.int64),
                         top_probs.astype(np.float32)))
    return examples


def make_batches(examples, tokens_per_batch: int, rng: random.Random):
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]) + len(examples[i][1]))
    batches, cur, cur_len = [], [], 0
    for i in order:
        n = len(examples[i][0]) + len(examples[i][1])
        if cur and max(cur_len, n) * (len(cur) + 1) > tokens_per_batch:
            batches.append(cur)
            cur, cur_len = [], 0
        cur.append(i)
        cur_len = max(cur_len, n)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def batch_loss(model: Transformer, examples, idx, head_index: torch.Tensor, prompt_weight: float = 0.2):
    """Soft cross-entropy to the target's top-k on generated positions, plain cross-entropy on prompt positions.

    The draft's head covers ``head_size`` tokens; ``head_index`` maps a vocabulary id to its head row (-1: none).
    Targets outside the head are dropped: the draft gives them probability zero by construction.
    """
    seqs = [np.concatenate([examples[i][0], examples[i][1]]) for i in idx]
    T = max(len(s) for s in seqs)
    B = len(seqs)
    x = torch.zeros(B, T, dtype=torch.long)
    for b, s in enumerate(seqs):
        x[b, :len(s)] = torch.from_numpy(s)  # right padding: causal attention never looks at it
    logp = F.log_softmax(model(x[:, :-1], reduced=True).float(), dim=-1)  # (B, T-1, H)
    total, count = logp.new_zeros(()), 0.0
    for b, i in enumerate(idx):
        prompt, cont, top_ids, top_probs = examples[i]
        P, C = len(prompt), len(cont)
        rows = head_index[torch.from_numpy(top_ids)]  # (C, k) head rows of the teacher's top tokens
        soft = torch.from_numpy(top_probs) * (rows >= 0)
        soft = soft / soft.sum(-1, keepdim=True).clamp(min=1e-9)
        lp = logp[b, P - 1:P - 1 + C]  # predicts cont[t] from position P - 1 + t
        total = total - (soft * lp.gather(-1, rows.clamp(min=0))).sum()
        count += C
        if P > 1 and prompt_weight:
            rows = head_index[torch.from_numpy(prompt[1:])]
            keep = rows >= 0
            total = total - prompt_weight * logp[b, :P - 1][keep].gather(-1, rows[keep][:, None]).sum()
            count += prompt_weight * int(keep.sum())
    return total / count


def frequent_tokens(examples, vocab_size: int, head_size: int) -> torch.Tensor:
    """The ``head_size`` most frequent tokens of the data (teacher's choices weighted by probability)."""
    counts = np.zeros(vocab_size)
    for prompt, cont, top_ids, top_probs in examples:
        np.add.at(counts, prompt, 1.0)
        np.add.at(counts, cont, 1.0)
        np.add.at(counts, top_ids.ravel(), top_probs.ravel())
    return torch.from_numpy(np.sort(np.argsort(-counts, kind="stable")[:head_size]))


def cmd_train(args) -> None:
    from tqdm.auto import tqdm

    work = Path(args.work)
    ckpt_path = work / "checkpoint.pt"
    target = load_model("embedded")
    spec = DraftSpec(n_layer=args.layers, d_model=args.width, d_ff=args.ff, head_size=args.head_size)
    config = draft_config(target.config, spec)
    examples = load_examples(work / "data", spec.max_seq_len if args.max_len is None else args.max_len)
    if not examples:
        raise SddError(f"no training data in {work / 'data'}; run the 'data' step first")
    n_tokens = sum(len(e[1]) for e in examples)
    torch.manual_seed(0)
    model = Transformer(config)
    with torch.no_grad():
        model.tok_emb.weight.copy_(pca_embedding(target, spec.d_model))
        model.head_ids.copy_(frequent_tokens(examples, config.vocab_size, config.head_size))
    del target
    head_index = torch.full((config.vocab_size,), -1, dtype=torch.long)
    head_index[model.head_ids] = torch.arange(config.head_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    step, epoch, elapsed, history = 0, 0, 0.0, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        head_index.fill_(-1)
        head_index[model.head_ids] = torch.arange(config.head_size)
        step, epoch, elapsed = state["step"], state["epoch"], state["elapsed"]
        history = state.get("history", [])
        print(f"resumed at step {step} (epoch {epoch}, {elapsed / 60:.1f} min trained)")
    rng = random.Random(epoch)
    batches = make_batches(examples, args.batch_tokens, rng)
    total_steps = args.epochs * len(batches)
    print(f"draft {config.n_layer} layers x {config.d_model}, {model.num_parameters / 1e6:.1f}M parameters; "
          f"{len(examples)} examples, {n_tokens / 1e3:.0f}k generated tokens, {len(batches)} batches per epoch")

    def lr_at(s):
        warm = 50
        if s < warm:
            return args.lr * (s + 1) / warm
        frac = min(1.0, (s - warm) / max(1, total_steps - warm))
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    # one record per training session, for the model card: a resumed run may use other data or settings
    session = {"from_step": step, "to_step": step, "minutes": 0.0, "examples": len(examples),
               "generated_tokens": n_tokens, "batch_tokens": args.batch_tokens, "bf16": bool(args.bf16)}
    session_start = elapsed

    def save():
        session.update(to_step=step, minutes=(elapsed - session_start) / 60)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "epoch": epoch,
                    "elapsed": elapsed, "config": config.to_dict(), "spec": asdict(spec),
                    "history": history + [session]}, tmp)
        tmp.replace(ckpt_path)

    deadline = time.time() + 60 * args.minutes if args.minutes else float("inf")
    bar = tqdm(total=total_steps, initial=step, desc="train draft", unit="step")
    model.train()
    last_save = time.time()
    while step < total_steps and time.time() < deadline:
        idx = batches[step % len(batches)]
        t0 = time.time()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = batch_loss(model, examples, idx, head_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        elapsed += time.time() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr_at(step):.1e}")
        if step % len(batches) == 0:
            epoch += 1
            batches = make_batches(examples, args.batch_tokens, random.Random(epoch))
        if time.time() - last_save > 60 * args.save_minutes:
            save()
            last_save = time.time()
    bar.close()
    save()
    print(f"saved {ckpt_path} at step {step}/{total_steps} after {elapsed / 60:.1f} min of training")


# ----------------------------------------------------------------------------- evaluation and export

def load_checkpoint(work: Path) -> Transformer:
    state = torch.load(Path(work) / "checkpoint.pt", weights_only=False, map_location="cpu")
    model = Transformer(ModelConfig(**state["config"]))
    model.load_state_dict(state["model"])
    return model.eval().requires_grad_(False)


def as_loaded(model: Transformer, tokenizer, name="draft") -> LoadedModel:
    return LoadedModel(name, model, tokenizer, "checkpoint")


def write_model_card(result: dict, work: Path, path: Path) -> None:
    """The draft's model card, from the checkpoint's training record and a fresh evaluation."""
    from .measure.timing import device_description

    state = torch.load(Path(work) / "checkpoint.pt", weights_only=False, map_location="cpu")
    c = ModelConfig(**state["config"])
    data = list((Path(work) / "data").glob("shard-*.npz"))
    examples = sum(len(np.load(f)["prompt_lengths"]) for f in data)
    tokens = sum(int(np.load(f)["tokens"].size) for f in data)
    size = (ASSET_DIR / "model.safetensors").stat().st_size if (ASSET_DIR / "model.safetensors").exists() else 0
    training = f"{state['step']} steps ({state['epoch']} full epochs), {state['elapsed'] / 60:.0f} minutes on " \
               f"{device_description(torch.device('cpu'))}"
    if state.get("history"):
        training += "; " + "; ".join(
            f"steps {h['from_step']}-{h['to_step']}: {h['minutes']:.0f} min on {h['examples']} continuations "
            f"({h['generated_tokens'] / 1e3:.0f}k tokens), batches of up to {h['batch_tokens']} tokens"
            + (", bf16 autocast" if h["bf16"] else "") for h in state["history"])
    path.write_text(f"""# smollm2-draft: the draft model of the embedded ladder

A small Llama-family model that drafts for SmolLM2-135M-Instruct (the embedded target) in speculative,
tree and staged decoding.  It shares the target's tokenizer; its output head covers the
{c.head_size} tokens the target uses most, so every other token has draft probability zero (exactness
does not need more: the target corrects whatever the draft cannot propose).

| | |
|---|---|
| architecture | {c.n_layer} layers, width {c.d_model}, {c.n_head} heads ({c.n_kv_head} key/value), MLP {c.d_ff}, RoPE, RMSNorm, SwiGLU |
| parameters | {result['draft_parameters'] / 1e6:.1f}M (embedding {c.vocab_size} x {c.d_model}, tied to the {c.head_size}-row head) |
| weights shipped | {size / 1e6:.1f} MB (fp16 safetensors) |
| training data | {examples} continuations ({tokens / 1e3:.0f}k tokens) written by the target itself for signature + docstring prompts taken from the Python standard library's documented functions, sampled at temperature 0.7 (top-k 50), with the target's top-16 probabilities at every position; never HumanEval |
| objective | cross-entropy to the target's top-16 distribution on generated tokens, plus 0.2 x next-token cross-entropy on prompt tokens; embedding initialised from a PCA of the target's |
| training | {training} |
| greedy agreement with the target | top-1 {result['top1']:.3f}, top-4 {result['top4']:.3f}, along the target's own greedy continuations ({result['positions']} positions, HumanEval/0 to HumanEval/{result['prompts'] - 1}, {result.get('new_tokens', 64)} tokens each) |
| cost of one forward | {result['draft_ms']:.2f} ms against {result['target_ms']:.1f} ms for the target ({result['cost_ratio']:.3f} of it), one new token after 256 cached, fp32, {result['threads']} threads |

Reproduce: `python -m sdd_edu.train_draft data`, `train`, `eval`, `export` (see the module's docstring).
A Hugging Face `LlamaForCausalLM` copy for `transformers`' assisted generation:
`python -m sdd_edu.train_draft export --hf DIR` (its head is full-vocabulary, with zero rows outside the
{c.head_size} tokens).
""")


def cmd_eval(args) -> dict:
    from .measure.agreement import forward_cost, greedy_agreement

    target = load_model("embedded")
    draft = load_model("smollm2-draft") if args.shipped else as_loaded(load_checkpoint(Path(args.work)),
                                                                          target.tokenizer)
    agree = greedy_agreement(target, draft, prompts=args.prompts, new_tokens=args.new_tokens)
    t_target = forward_cost(target)
    t_draft = forward_cost(draft)
    result = {**agree, "target_ms": 1000 * t_target, "draft_ms": 1000 * t_draft, "cost_ratio": t_draft / t_target,
              "draft_parameters": draft.model.num_parameters, "threads": torch.get_num_threads()}
    result["new_tokens"] = args.new_tokens
    print(json.dumps(result, indent=1))
    if args.card:
        write_model_card(result, Path(args.work), ASSET_DIR / "MODEL_CARD.md")
        print(f"wrote {ASSET_DIR / 'MODEL_CARD.md'}")
    return result


def cmd_export(args) -> None:
    """fp16 weights into the package, and optionally a Hugging Face LlamaForCausalLM folder."""
    from safetensors.torch import save_file

    model = load_checkpoint(Path(args.work))
    ASSET_DIR.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(ASSET_DIR / "model.safetensors"))
    (ASSET_DIR / "sdd_config.json").write_text(json.dumps(model.config.to_dict(), indent=1))
    size = (ASSET_DIR / "model.safetensors").stat().st_size
    print(f"wrote {ASSET_DIR / 'model.safetensors'} ({size / 1e6:.1f} MB)")
    if args.hf:
        export_hf(load_model("smollm2-draft", dtype="fp32"), Path(args.hf))


def cmd_samples(args) -> None:
    """Text sampled from the shipped draft: the corpus of the trigram stage (the paper samples its draft)."""
    from tqdm.auto import tqdm

    from .draft_data import generate_batch, stdlib_function_prompts

    draft = load_model("smollm2-draft", dtype="fp32")
    prompts = stdlib_function_prompts()
    random.Random(2).shuffle(prompts)
    encoded = [ids for ids in (draft.encode(p) for p in prompts) if 8 <= len(ids) <= 96]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    batches = [order[i:i + args.batch] for i in range(0, len(order), args.batch)]
    random.Random(3).shuffle(batches)
    streams, total = [], 0
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k)
    bar = tqdm(total=args.tokens, desc="draft samples", unit="tok", unit_scale=True)
    for b, idx in enumerate(batches):
        if total >= args.tokens:
            break
        batch = [encoded[i] for i in idx]
        tokens, _, _ = generate_batch(draft, batch, args.new_tokens, sampling, torch.Generator().manual_seed(b),
                                      keep_top=1)
        for prompt, cont in zip(batch, tokens.tolist()):
            streams.append(prompt + cont)
            total += len(cont)
        bar.update(tokens.numel())
    bar.close()
    lengths = np.array([len(x) for x in streams], dtype=np.int32)
    flat = np.concatenate([np.asarray(x, dtype=np.uint16) for x in streams])
    out = ASSET_DIR / "draft-samples.npz"
    np.savez_compressed(out, lengths=lengths, tokens=flat, temperature=args.temperature)
    print(f"wrote {out}: {total} sampled tokens in {len(streams)} streams ({out.stat().st_size / 1e6:.1f} MB)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdd_edu.train_draft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(cache_dir() / "draft-work"), help="data and checkpoints")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="generate the target's continuations (resumable)")
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--new-tokens", type=int, default=160)
    p.add_argument("--max-prompt-tokens", type=int, default=160, help="longer prompts are skipped (prefill cost)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--minutes", type=float, default=0, help="stop after this long (0: all prompts)")
    p.add_argument("--limit", type=int, default=0, help="use only this many prompts (tests)")
    p.add_argument("--dtype", default="bf16", help="bf16 halves the cost of generation on CPUs that have it")
    p = sub.add_parser("train", help="train the draft (resumes from the last checkpoint)")
    p.add_argument("--layers", type=int, default=DraftSpec.n_layer)
    p.add_argument("--width", type=int, default=DraftSpec.d_model)
    p.add_argument("--ff", type=int, default=DraftSpec.d_ff)
    p.add_argument("--head-size", type=int, default=DraftSpec.head_size)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--max-len", type=int, default=None)
    p.add_argument("--minutes", type=float, default=0, help="stop (and checkpoint) after this long")
    p.add_argument("--save-minutes", type=float, default=5)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on CPUs with bf16 units)")
    p = sub.add_parser("eval", help="agreement with the target on HumanEval, and the cost of one forward")
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--shipped", action="store_true", help="evaluate the draft shipped in the package")
    p.add_argument("--card", action="store_true", help="write the model card with the results")
    p = sub.add_parser("export", help="write the package's fp16 draft (and --hf DIR: a Hugging Face folder)")
    p.add_argument("--hf", default=None)
    p = sub.add_parser("samples", help="sample text from the shipped draft for the trigram stage")
    p.add_argument("--tokens", type=int, default=600_000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=100)
    args = parser.parse_args(argv)
    try:
        {"data": cmd_data, "samples": cmd_samples, "train": cmd_train, "eval": cmd_eval, "export": cmd_export}[args.command](args)
    except SddError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
