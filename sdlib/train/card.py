"""Model cards: every checkpoint folder holds a ``README.md`` (huggingface_hub's ``ModelCard``) with the Hugging
Face metadata header (base model, datasets, tags), what the starting weights are, the sdlib config that made it,
S before and after in both last-state conventions, and the per-layer evaluation table when there is one, so a
checkpoint pushed to the hub explains itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData

from sdlib.errors import SdlibError
from sdlib.packaged import is_packaged, packaged
from sdlib.runs import CONFIG_FILE
from sdlib.train.config import load_config
from sdlib.train.runlog import EvalRecord, from_dict
from sdlib.types import LAST_STATES

DATASETS = {"fineweb-edu": "HuggingFaceFW/fineweb-edu"}


PAPER = "Shibata, Takahashi, Yano, Li, Ikeda, Suzuki: \"Improving the internal behaviour of Transformer LLMs: " \
        "numerical convergence of hidden-state vectors\""


def base_model(model: str) -> tuple[str | None, str]:
    """(the hub id the card names as ``base_model``, a sentence on what the starting weights are)."""
    if is_packaged(model):
        m = packaged(model)
        return m.base_model or None, (f"The starting weights are sdlib's built-in `{model}`: {m.title}, dequantized to "
                                      f"float32 from a {m.quantization} GGUF of {m.base_model}, not the original "
                                      "release's weights.")
    if "/" in model and not Path(model).exists():
        return model, f"The starting weights are {model} from the Hugging Face hub."
    return None, f"The starting weights are `{model}`."


def model_card(config, first_eval: EvalRecord | None, last_eval: EvalRecord | None, step: int,
               evaluation=None) -> str:
    """The README.md text, built with huggingface_hub's ``ModelCard``. ``first_eval``/``last_eval``: the run's
    measurements at step 0 and now; ``evaluation``: a tidy per-layer table (``sdlib.evaluation``) or None."""
    base, origin = base_model(config.model)
    data = ModelCardData(library_name="transformers", base_model=base, tags=[
        "sdlib", "self-distillation", "hidden-state-convergence"],
        datasets=[DATASETS[config.data]] if config.data in DATASETS else None)
    tokens = step * config.batch_size * config.seq_len
    lines = [f"# {config.name}: {config.model} after self-distillation (sdlib)", "",
             f"Self-distilled with sdlib, the companion library of {PAPER}, for {step} optimizer steps ({tokens:,} "
             f"tokens of {config.data}) with the loss zeta = zeta1 + {config.alpha} zeta2 (k = {config.k}, "
             f"{config.kl_direction} KL, zeta2 on the {config.last_state} last state, form {config.zeta2_form}); the "
             f"teacher is the frozen starting model. {origin}", ""]
    if first_eval and last_eval:
        lines += ["## Monotonicity S of the hidden-state movement", "",
                  f"Measured in training on {first_eval.tokens:,} tokens of held-out text ({config.eval_text}, "
                  f"{config.eval_windows} windows of {config.eval_window_len} tokens).", "",
                  "| last state | before | after |", "|---|---|---|"]
        lines += [f"| {c} | {first_eval.S[c]:.4f} | {last_eval.S[c]:.4f} |" for c in LAST_STATES]
        lines.append("")
    if evaluation is not None and len(evaluation):
        wide = evaluation.pivot_table(index="layer", columns=["task", "metric"], values="value")
        lines += ["## Per-layer evaluation (logit lens, scored as lm-eval does)", "",
                  wide.to_markdown(floatfmt=".4g") if _has_tabulate() else wide.to_string(), ""]
    lines += ["## The config that made it", "", "```yaml", yaml.safe_dump(config.to_dict(), sort_keys=False).strip(),
              "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def push_to_hub(checkpoint: Path, repo_id: str) -> str:
    """Upload a checkpoint folder (weights, tokenizer, config, card) to the hub; one clear error offline."""

    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(checkpoint), repo_id=repo_id, ignore_patterns=["state/*", "*.json.tmp"])
    except Exception as err:  # noqa: BLE001 (no network, no token, no access: all one line)
        raise SdlibError(f"could not push {checkpoint} to the hub as {repo_id} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:160] if str(err) else ''}); the checkpoint is kept, push it "
                         "later with `huggingface-cli upload`") from None
    return f"https://huggingface.co/{repo_id}"


def _eval_record(data: dict[str, Any] | None) -> EvalRecord | None:
    """A measurement saved in a checkpoint's metrics.json (older checkpoints saved step, S and D only)."""
    return None if not data else from_dict({"tokens": 0, **data, "kind": "eval"})


def refresh_card(checkpoint: Path, evaluation) -> Path:
    """Rewrite a checkpoint's model card with its per-layer evaluation table (after ``sdlib eval`` or the figures'
    evaluation of it)."""
    import json

    checkpoint = Path(checkpoint)
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    card = model_card(load_config(checkpoint / CONFIG_FILE), _eval_record(metrics.get("first_eval")),
                      _eval_record(metrics.get("last_eval")), metrics["step"], evaluation)
    (checkpoint / "README.md").write_text(card, encoding="utf-8")
    return checkpoint / "README.md"
