"""Our engine's baseline against ``transformers``' own ``generate`` on the same model, dtype, threads and prompts."""

from __future__ import annotations

import time

import torch

from ..data import humaneval_prompts
from ..decoding.baseline import baseline_decode
from ..errors import SddError
from ..loading import EMBEDDED, LoadedModel, embedded_gguf_path, load_model
from .timing import device_description, median


def load_reference(name: str, like: LoadedModel, kept: bool = True):
    """The same checkpoint in ``transformers`` (needs ``accelerate`` for the GGUF file).

    The embedded model is read from its GGUF file by ``transformers`` itself, independently of our loader; its
    result is kept on disk (``_kept_reference``), so that later loads take a second instead of some fifteen.
    ``kept=False`` reads the file again and keeps nothing (the tests compare the two)."""
    from transformers import AutoModelForCausalLM

    kw = dict(dtype=like.dtype)
    if name == EMBEDDED:
        path = embedded_gguf_path()
        folder = _kept_reference(path, like.dtype)
        if kept and (folder / "model.safetensors").exists():
            model = AutoModelForCausalLM.from_pretrained(str(folder), **kw)
        else:
            try:
                model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kw)
            except ImportError as exc:
                raise SddError(f"transformers could not load the GGUF file: {exc}") from None
            if kept:
                _keep_reference(model, folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(like.source.removeprefix("hub:"), **kw)
    return model.to(like.device).eval()


def _kept_reference(gguf_path, dtype):
    """Where ``transformers``' own reading of the GGUF file is kept: per file, dtype and ``transformers`` version
    (another version reads the file again, with its own dequantisation)."""
    import transformers

    from ..loading import cache_dir

    tag = f"{gguf_path.stem}-{str(dtype).replace('torch.', '')}-transformers-{transformers.__version__}"
    return cache_dir() / "transformers-reference" / tag


def _keep_reference(model, folder) -> None:
    """Save the dequantised model as a plain checkpoint (``save_pretrained`` refuses a model read from GGUF):
    its config without the GGUF quantisation note, its weights with safetensors, written beside the folder and
    renamed into place, so that a reader never sees half of it.  A failure to write only costs the next load."""
    import json
    import os
    import shutil

    from safetensors.torch import save_model

    staging = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    try:
        staging.mkdir(parents=True, exist_ok=True)
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (staging / "config.json").write_text(json.dumps(config, indent=1))
        save_model(model, str(staging / "model.safetensors"))  # tied embeddings and head: stored once
        staging.rename(folder)
    except OSError:  # no room, no permission, or another process kept it first
        shutil.rmtree(staging, ignore_errors=True)


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int, device) -> tuple[list[int], float]:
    x = torch.tensor([prompt_ids], device=device)
    from .timing import synchronize

    synchronize(device)
    t0 = time.perf_counter()
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                         min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=model.config.eos_token_id)
    synchronize(device)
    return out[0, len(prompt_ids):].tolist(), time.perf_counter() - t0


def engine_bench(model_name: str = EMBEDDED, prompts: int = 3, max_new_tokens: int = 128, repeats: int = 3,
                 device=None, dtype=None, progress: bool = True) -> dict:
    """Median tokens/s of both engines over prompts x repeats, after one warm-up each."""
    ours = load_model(model_name, device=device, dtype=dtype)
    ref = load_reference(model_name, ours)
    rows = []
    items = humaneval_prompts(prompts)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(items) * (repeats + 1) * 2, desc="engine-bench", unit="run")
    for task_id, text in items:
        ids = ours.encode(text)
        for r in range(repeats + 1):  # r == 0 is the warm-up
            res = baseline_decode(ours, ids, max_new_tokens, stop_at_eos=False)
            ref_ids, ref_s = hf_greedy(ref, ids, max_new_tokens, ours.device)
            if bar:
                bar.update(2)
            if r:
                rows.append({"task_id": task_id, "ours_tok_s": res.stats.tokens_per_second,
                             "transformers_tok_s": len(ref_ids) / ref_s,
                             "same_ids": res.token_ids == ref_ids,
                             "first_difference": next((i for i, (a, b) in enumerate(zip(res.token_ids, ref_ids))
                                                       if a != b), None)})
    if bar:
        bar.close()
    ours_med = median([r["ours_tok_s"] for r in rows])
    ref_med = median([r["transformers_tok_s"] for r in rows])
    return {"model": model_name, "device": device_description(ours.device),
            "dtype": str(ours.dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
            "prompts": len(items), "repeats": repeats, "max_new_tokens": max_new_tokens,
            "ours_tok_s": ours_med, "transformers_tok_s": ref_med, "speedup": ours_med / ref_med,
            "same_ids_fraction": sum(r["same_ids"] for r in rows) / len(rows), "runs": rows}


def format_engine_bench(res: dict) -> str:
    return "\n".join([
        f"engine-bench: {res['model']} on {res['device']}, {res['dtype']}, {res['threads']} threads, "
        f"{res['prompts']} HumanEval prompts x {res['repeats']} runs after warm-up, {res['max_new_tokens']} new tokens",
        f"  {'engine':<14}{'median tok/s':>14}",
        f"  {'sdd-edu':<14}{res['ours_tok_s']:>14.1f}",
        f"  {'transformers':<14}{res['transformers_tok_s']:>14.1f}",
        f"  speedup {res['speedup']:.2f}x; identical greedy ids in {100 * res['same_ids_fraction']:.0f}% of runs",
    ])
