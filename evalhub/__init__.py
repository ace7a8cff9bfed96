"""evalhub: one loop for fine-tuning, registering, serving, evaluating and rolling out LLM adapters."""

__version__ = "0.1.0"

import warnings

# peft probes `model.is_gradient_checkpointing`, which transformers 5 deprecated: every adapter
# wrapped would warn about code that is neither the user's nor evalhub's.
warnings.filterwarnings(
    "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
)
