"""lm-eval models that read the logit lens of a decoder layer instead of the final output.

* ``LayerLM`` (registered as ``sdlib-layer``): an ``HFLM`` whose logits are the lens of layer ``layer``
  (0..L; None or L = the model's own output). Usable as any lm-eval model::

      lm_eval.simple_evaluate(model=LayerLM("smollm2-135m-instruct", layer=7), tasks=["lambada_openai"])
      python -m sdlib lm-eval --model_args pretrained=smollm2-135m-instruct,layer=7 --tasks lambada_openai

* ``AllLayersLM``: the same requests, built by lm-eval's own code (tokenization, BOS/prefix handling,
  trailing spaces, rolling windows), scored for *every* layer from one forward pass. Its
  ``_loglikelihood_tokens`` returns per-layer arrays in place of lm-eval's floats; lm-eval's rolling
  sum adds them element-wise, so the rest of its pipeline runs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from torch import nn

from sdlib.errors import SdlibError
from sdlib.lens import lens_head, lens_logits
from sdlib.models import default_device, load
from sdlib.parts import decoder_parts
from sdlib.states import hidden_states, layer_state


def _load_pretrained(pretrained, tokenizer, dtype, device):
    """A name/folder/run for ``sdlib.models.load`` or an already-loaded model (+ its tokenizer)."""
    if isinstance(pretrained, nn.Module):
        if tokenizer is None:
            raise SdlibError("pass tokenizer= with an already-loaded model")
        return pretrained, tokenizer

    return load(str(pretrained), dtype=dtype or "float32", device=default_device(device))


class LayerLM(HFLM):
    """lm-eval's HFLM reading decoder layer ``layer``'s logit lens (final norm + lm_head on h_layer)."""

    def __init__(self, pretrained, layer: int | str | None = None, tokenizer=None, dtype: str | None = None,
                 device: str | None = None, batch_size: int | str = 8, max_length: int | None = None, **kwargs):
        model, tok = _load_pretrained(pretrained, tokenizer, dtype, device)
        model.eval()
        super().__init__(pretrained=model, tokenizer=tok, batch_size=batch_size, max_length=max_length, **kwargs)
        # lm-eval tokenizes a whole WikiText page and scores it in rolling windows of max_length, so a page longer
        # than the model's positions is expected: mark transformers' once-only "indexing errors" warning as given
        getattr(self.tokenizer, "deprecation_warnings", {})[
            "sequence-length-is-longer-than-the-specified-maximum"] = True
        self.num_layers = decoder_parts(model).num_layers  # L + 1
        self.layer = None if layer in (None, "", "None") else int(layer)
        if self.layer is not None and not 0 <= self.layer < self.num_layers:
            raise SdlibError(f"layer={layer} is out of range: this model has decoder layers 0..{self.num_layers - 1}")

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        if self.layer is None or self.layer == self.num_layers - 1:
            return super()._model_call(inps, attn_mask, labels)

        with torch.no_grad():
            states = hidden_states(self.model, inps)
            return lens_logits(self.model, states, self.layer)


register_model("sdlib-layer")(LayerLM)


class AllLayersLM(LayerLM):
    """Scores every layer 0..L from one forward pass per batch (see the module docstring).

    ``chunk_tokens`` bounds the vocabulary logits alive at once ([chunk_tokens, V] for one layer).
    ``on_batch(n)`` is called after each batch with the number of requests scored (progress bars).
    """

    def __init__(self, pretrained, tokenizer=None, chunk_tokens: int = 1024,
                 on_batch: Callable[[int], None] | None = None, score_layers: list[int] | None = None, **kwargs):
        super().__init__(pretrained, layer=None, tokenizer=tokenizer, **kwargs)
        self.chunk_tokens = chunk_tokens
        self.on_batch = on_batch
        self.score_layers = list(range(self.num_layers)) if score_layers is None else list(score_layers)
        if any(not 0 <= l < self.num_layers for l in self.score_layers):
            raise SdlibError(f"layers {self.score_layers} out of range 0..{self.num_layers - 1}")

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """requests: [((context, continuation) | None, context_enc, continuation_enc)]
        -> [(loglikelihood float64 [n_layers], is_greedy bool [n_layers])] in request order, for the layers in
        ``score_layers`` (default: all L + 1)."""
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list = [None] * len(requests)
        bs = int(override_bs or self.batch_size)
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            for i, res in zip(idx, self._score_batch([requests[i] for i in idx])):
                results[i] = res
            if self.on_batch is not None:
                self.on_batch(len(idx))
        return results

    def rolling_windows(self, requests) -> int:
        """How many windows ``loglikelihood_rolling`` scores for ``requests`` (lm-eval's own windowing): the
        total of a progress bar that counts them."""
        from lm_eval import utils

        return sum(len(list(utils.get_rolling_token_windows(
            token_list=self.tok_encode(req.args[0]), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
            context_len=1))) for req in requests)

    @torch.no_grad()
    def _score_batch(self, batch) -> list[tuple[np.ndarray, np.ndarray]]:

        inps, rows, cols, targets, owner = [], [], [], [], []
        for b, (_, context_enc, continuation_enc) in enumerate(batch):
            # exactly HFLM._loglikelihood_tokens: left-truncate to max_length + 1, drop the last token
            inp = (context_enc + continuation_enc)[-(self.max_length + 1):][:-1]
            contlen = len(continuation_enc)
            inps.append(inp)
            rows += [b] * contlen
            cols += range(len(inp) - contlen, len(inp))
            targets += continuation_enc
            owner += [b] * contlen
        width = max(len(x) for x in inps)
        ids = torch.zeros(len(inps), width, dtype=torch.long)  # right padding, no mask: as lm-eval
        for b, inp in enumerate(inps):
            ids[b, : len(inp)] = torch.tensor(inp, dtype=torch.long)
        states = hidden_states(self.model, ids.to(self.device))
        rows_t = torch.tensor(rows, device=self.device)
        cols_t = torch.tensor(cols, device=self.device)
        targets_t = torch.tensor(targets, device=self.device)
        owner_t = torch.tensor(owner, device=self.device)
        n_req, last = len(batch), self.num_layers - 1
        loglik = torch.zeros(len(self.score_layers), n_req, dtype=torch.float64, device=self.device)
        misses = torch.zeros(len(self.score_layers), n_req, dtype=torch.long, device=self.device)
        for row, layer in enumerate(self.score_layers):
            h = layer_state(states, layer)[rows_t, cols_t]  # [N, d]: only the scored positions
            for s in range(0, h.shape[0], self.chunk_tokens):
                part = slice(s, s + self.chunk_tokens)
                logits = lens_head(self.model, h[part], already_normed=(layer == last))
                logprobs = torch.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
                tgt = targets_t[part]
                token_ll = logprobs.gather(-1, tgt[:, None])[:, 0].double()
                loglik[row].index_add_(0, owner_t[part], token_ll)
                misses[row].index_add_(0, owner_t[part], (logprobs.argmax(-1) != tgt).long())
        loglik, greedy = loglik.cpu().numpy(), (misses == 0).cpu().numpy()
        return [(loglik[:, b].copy(), greedy[:, b].copy()) for b in range(n_req)]
