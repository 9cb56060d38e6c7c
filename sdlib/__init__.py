"""sdlib: measure how hidden states move layer by layer, and self-distil them into convergence.

Companion to "Improving the internal behaviour of Transformer LLMs: numerical convergence of
hidden-state vectors" (Shibata et al.).
"""

from sdlib.errors import SdlibError
from sdlib.lens import lens_logits, lens_top1
from sdlib.loss import LossSettings, layer_weights, self_distillation_loss
from sdlib.metrics import layer_movement, monotonicity, token_movement
from sdlib.models import load
from sdlib.parts import decoder_parts
from sdlib.states import HiddenStates, forward_states, hidden_states
from sdlib.types import KLDirection, LastState, Zeta2Form

__version__ = "0.2.0"
__all__ = ["HiddenStates", "KLDirection", "LastState", "LossSettings", "SdlibError", "Zeta2Form", "decoder_parts",
           "forward_states", "hidden_states", "layer_movement", "layer_weights", "lens_logits", "lens_top1", "load",
           "monotonicity", "self_distillation_loss", "token_movement"]
