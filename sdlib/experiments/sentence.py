"""One sentence through a profile's models: the logit lens of its last positions (paper Fig. 7; the ``lens`` study)
and the PCA trajectories of its hidden states (Fig. 4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sdlib.cache import Record
from sdlib.experiments.profiles import Pair
from sdlib.states import hidden_states
from sdlib.studies import registry
from sdlib.studies.lens_grid import FIG7_SENTENCE, LensGrid, LensSettings, readable_token
from sdlib.types import Role


def lens_grid(pair: Pair, role: Role, text: str = FIG7_SENTENCE, device: str | None = None) -> LensGrid:
    """The ``lens`` study of one model of a pair on ``text`` (cached; labelled as the pair names the model)."""
    return registry.get("lens").run(pair.subject(role, device), LensSettings(text=text))


@dataclass
class PcaTrajectories(Record):
    """Every token's states h_{-1}..h_L of a text in several models (a profile's, ``Profile.models``), as unit
    vectors (directions: the geometry D measures), projected on one PCA fitted to all of them except the excluded
    positions."""

    points: list[dict[str, Any]]
    """role, label, token_index, token, layer, pc1..pcK (excluded positions too, projected, flagged ``fitted``)"""
    explained: list[float]
    excluded_positions: list[int] = field(default_factory=list)
    """positions left out of the fit (position 0: an attention sink whose state dwarfs the others)"""
    text: str = ""
    last_state: str = "normed"

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.points)


@torch.no_grad()
def pca_trajectories(models: Sequence[tuple[Pair, Role]], text: str = FIG7_SENTENCE, last_state: str = "normed",
                     n_components: int = 3, exclude_positions: tuple[int, ...] = (0,),
                     device: str | None = None) -> PcaTrajectories:
    from sklearn.decomposition import PCA

    per_model = {}
    for pair, role in models:
        model, tok = pair.load(role, device)
        ids = tok(text, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
        states = torch.stack([s[0] for s in hidden_states(model, ids, last_state=last_state)]).float()  # [L + 2, T, d]
        directions = states / states.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        per_model[pair.label(role)] = (role, directions.cpu().numpy(), [readable_token(tok, i) for i in ids[0].tolist()])
    fit = np.concatenate([s[:, [t for t in range(s.shape[1]) if t not in exclude_positions]].reshape(-1, s.shape[-1])
                          for _, s, _ in per_model.values()])
    pca = PCA(n_components=n_components, random_state=0).fit(fit)
    points = []
    for label, (role, s, tokens) in per_model.items():
        proj = pca.transform(s.reshape(-1, s.shape[-1])).reshape(s.shape[0], s.shape[1], n_components)
        for layer in range(s.shape[0]):
            for t, token in enumerate(tokens):
                points.append({"role": str(role), "label": label, "token_index": t, "token": token,
                               "layer": layer - 1, "fitted": t not in exclude_positions,
                               **{f"pc{i + 1}": float(proj[layer, t, i]) for i in range(n_components)}})
    return PcaTrajectories(points=points, explained=[float(v) for v in pca.explained_variance_ratio_],
                           excluded_positions=list(exclude_positions), text=text, last_state=last_state)
