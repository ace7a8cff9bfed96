"""What a suite from elsewhere may make the server import or open."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict


class MetricPolicy(BaseModel):
    """Which metrics a suite may name, and whether their options may name files on this machine.

    A suite the user runs on their own machine may load any `module:function`. A suite that
    arrives over the API is someone else's text: it may name the built-in metrics, the
    operator's installed entry points and the modules the operator listed, and no option that
    opens a file on the server. Names are checked before anything is imported.
    """

    model_config = ConfigDict(frozen=True)

    any_module: bool = True
    modules: frozenset[str] = frozenset()
    local_paths: bool = True

    @classmethod
    def for_server(cls, modules: Iterable[str] = ()) -> MetricPolicy:
        return cls(any_module=False, modules=frozenset(modules), local_paths=False)

    def allows_module(self, module: str) -> bool:
        return self.any_module or any(
            module == allowed or module.startswith(f"{allowed}.") for allowed in self.modules
        )


LOCAL = MetricPolicy()
