"""Pure computations over the gateway's traffic, scores and feedback: frames in, typed results
and decisions out; nothing here acts on anything.

- `monitors.cost`: the token-cost formula.
- `monitors.quality`: per-arm, per-version aggregates and cost per day.
- `monitors.drift` (with `monitors.descriptors`): is this window of traffic like the reference?
- `monitors.sequential`: anytime-valid confidence sequences for candidate minus control.
- `monitors.rollout`: promote, hold, inconclusive or roll back a rollout step.
- `monitors.alerts`: alert rules and webhook signatures.

Nothing is re-exported here: the gateway imports `monitors.cost` on its hot path, and importing
this package must not load pandas for it.
"""
