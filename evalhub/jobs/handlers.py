"""Which handler runs which kind of job. Each capability adds its kind here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from evalhub.jobs.worker import Handler, JobContext

if TYPE_CHECKING:
    from evalhub.platform import Platform


def default_handlers(platform: Platform) -> dict[str, Handler]:
    """Imported lazily: a worker pulls in torch or openai only when it starts.

    Handlers use `platform`: its home, artifact store and registry.
    """

    def fine_tune(context: JobContext) -> dict[str, Any] | None:
        from evalhub.finetune.handler import run_fine_tune

        return run_fine_tune(context, platform)

    def evaluate(context: JobContext) -> dict[str, Any] | None:
        from evalhub.eval.service import eval_handler

        return eval_handler(platform)(context)

    handlers: dict[str, Handler] = {"fine_tune": fine_tune, "eval": evaluate}
    return handlers
