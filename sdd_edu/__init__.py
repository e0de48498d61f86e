"""sdd-edu: learn how to make small-batch LLM decoding fast.

Baseline (KV cache), speculative, tree-speculative and staged speculative decoding
on one compact reference engine, measured on your own device.
"""

__version__ = "0.1.0"

from .data import humaneval_ids, humaneval_prompt, humaneval_prompts  # noqa: E402
from .decoding import METHODS, GenerationResult  # noqa: E402
from .errors import SddError  # noqa: E402
from .ladders import LADDERS, get_ladder  # noqa: E402
from .loading import MODELS, LoadedModel, load_model  # noqa: E402
from .measure.generation import generate  # noqa: E402  (decoding priced by what this device measured)
from .model import KVCache, ModelConfig, Transformer  # noqa: E402
from .sampling import Sampling  # noqa: E402

__all__ = ["generate", "load_model", "LoadedModel", "ModelConfig", "Transformer", "KVCache", "Sampling",
           "SddError", "MODELS", "LADDERS", "METHODS", "get_ladder", "GenerationResult",
           "humaneval_ids", "humaneval_prompt", "humaneval_prompts", "__version__"]
