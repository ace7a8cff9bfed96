"""Write a small fine-tuning task to try evalhub's training loop on: "upper: cat dog" -> "CAT DOG".

    python examples/upper_data.py [--train N] [DIR]

writes, into DIR (default: here):
- train.jsonl: N chat examples (default 200) to fine-tune on;
- val.jsonl: 50 examples to validate on, whose word sets never occur in training;
- cases.jsonl: 40 more such examples as eval cases (id, messages, expected), the held-out suite's
  dataset, and suite.yaml, a suite that scores them by exact match and chrF once
  `evalhub datasets add cases.jsonl --name upper-held-out --format eval` has registered them;
- bad.jsonl: five broken examples, to see what `evalhub finetune validate` reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SUITE = """\
name: upper
version: "1"
description: Upper-case the words after "upper:", on word sets training never showed.
dataset: upper-held-out
sampling: {temperature: 0, max_tokens: 24, seed: 0}
metrics:
  - name: exact_match
  - name: chrf
"""

BAD = [
    {"messages": [{"role": "user", "content": "upper: cat dog"}]},
    "{not json",
    {"messages": [{"role": "user", "content": "upper: sun"}]},
    "not json at all",
    {"messages": [{"role": "system", "content": "You shout."}]},
]


def main() -> None:
    from evalhub.finetune.tasks import as_eval_cases, upper_case_task, write_jsonl

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default=".", type=Path)
    parser.add_argument("--train", type=int, default=200, help="training examples")
    arguments = parser.parse_args()
    root: Path = arguments.directory
    write_jsonl(root / "train.jsonl", upper_case_task(arguments.train, seed=0))
    held_out = upper_case_task(90, seed=0, split="held_out")
    write_jsonl(root / "val.jsonl", held_out[:50])
    write_jsonl(root / "cases.jsonl", as_eval_cases(held_out[50:]))
    (root / "suite.yaml").write_text(SUITE, encoding="utf-8")
    lines = [row if isinstance(row, str) else json.dumps(row) for row in BAD]
    (root / "bad.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(
        f"wrote train.jsonl ({arguments.train} examples), val.jsonl (50), cases.jsonl (40), "
        "suite.yaml and bad.jsonl"
    )


if __name__ == "__main__":
    main()
