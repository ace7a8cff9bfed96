"""evalhub: one loop for fine-tuning, registering, serving, evaluating and rolling out LLM adapters."""

__version__ = "0.1.0"
