"""The local backend: transformers + peft behind vLLM's OpenAI and adapter admin API, on CPU too.

`engine` holds the model and its adapters (torch); `server` is its standalone HTTP process
(`python -m evalhub.serving.local.server`); `protocol`, `generation` and `errors` are torch-free.
"""
