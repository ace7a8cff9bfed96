"""Metrics by name. The decorator records creation options so that a saved run can rebuild them."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from evalhub.eval.metrics._base import Metric, MetricError

ENTRY_POINT_GROUP = "evalhub.metrics"

MetricFactory = Callable[..., Metric]

_FACTORIES: dict[str, MetricFactory] = {}


def register_metric(
    name: str, *, runtime_options: tuple[str, ...] = ()
) -> Callable[[MetricFactory], MetricFactory]:
    """Register a metric factory under `name`.

    `runtime_options` (API keys, caches, clients) are accepted when building but never recorded,
    so they never reach a saved run; the caller passes them again when rebuilding.
    """

    def decorate(factory: MetricFactory) -> MetricFactory:
        existing = _FACTORIES.get(name)
        if existing is not None and getattr(existing, "__wrapped__", None) is not factory:
            raise MetricError(
                f"metric {name!r} is already registered by {existing.__module__}; "
                "choose another name or unregister it first"
            )
        built = _recording(name, factory, runtime_options)
        _FACTORIES[name] = built
        return built

    return decorate


def _recording(
    name: str, factory: Callable[..., Any], runtime_options: tuple[str, ...] = ()
) -> MetricFactory:
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def build(**options: Any) -> Metric:
        try:
            signature.bind(**options)
        except TypeError as error:
            accepted = ", ".join(signature.parameters) or "none"
            raise MetricError(f"metric {name!r}: {error} (options: {accepted})") from error
        try:
            metric = factory(**options)
        except (TypeError, ValueError) as error:
            raise MetricError(f"metric {name!r}: {error}") from error
        if not isinstance(metric, Metric):
            raise MetricError(f"metric {name!r}: its factory returned {type(metric).__name__}")
        metric.name = name
        metric.options = {k: v for k, v in options.items() if k not in runtime_options}
        return metric

    return build


def _entry_point_names() -> list[str]:
    return [entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)]


def known_metrics() -> list[str]:
    """Every metric name that `create_metric` accepts, built-in and from entry points."""
    return sorted(set(_FACTORIES) | set(_entry_point_names()))


def _custom_factory(name: str) -> MetricFactory | None:
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            module = importlib.import_module(module_name)
            factory = getattr(module, attribute)
        except (ImportError, AttributeError) as error:
            raise MetricError(f"custom metric {name!r} could not be loaded: {error}") from error
    else:
        matches = [entry for entry in entry_points(group=ENTRY_POINT_GROUP) if entry.name == name]
        if not matches:
            return None
        factory = matches[0].load()
    if not callable(factory):
        raise MetricError(f"custom metric {name!r} is not callable")
    # A factory already decorated records itself; wrap plain ones so their options are recorded.
    if getattr(factory, "__wrapped__", None) is not None and factory in _FACTORIES.values():
        return factory
    return _recording(name, factory)


def create_metric(name: str, **options: Any) -> Metric:
    """Build a metric by registry name, `package.module:function`, or entry point name."""
    factory = _FACTORIES.get(name) or _custom_factory(name)
    if factory is None:
        raise MetricError(
            f"unknown metric {name!r}; known metrics: {', '.join(known_metrics())}. "
            f"Custom metrics are named 'package.module:function' or registered under the "
            f"{ENTRY_POINT_GROUP!r} entry point group"
        )
    metric = factory(**options)
    metric.name = name
    return metric
