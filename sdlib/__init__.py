"""sdlib: measure how hidden states move layer by layer, and self-distil them into convergence.

Companion to "Improving the internal behaviour of Transformer LLMs: numerical convergence of
hidden-state vectors" (Shibata et al.).
"""

from sdlib.errors import SdlibError
from sdlib.lens import lens_logits, lens_top1
from sdlib.loss import layer_weights, self_distillation_loss
from sdlib.metrics import layer_movement, monotonicity, token_movement
from sdlib.models import decoder_parts, load
from sdlib.states import forward_states, hidden_states

__version__ = "0.1.0"
__all__ = ["SdlibError", "forward_states", "hidden_states", "decoder_parts", "layer_movement", "layer_weights",
           "lens_logits", "lens_top1", "load", "monotonicity", "self_distillation_loss", "token_movement"]
