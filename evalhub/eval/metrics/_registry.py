"""Metrics by name. The decorator records creation options so that a saved run can rebuild them."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from evalhub.eval.metric_policy import LOCAL, MetricPolicy
from evalhub.eval.metrics._base import Metric, MetricError

ENTRY_POINT_GROUP = "evalhub.metrics"

MetricFactory = Callable[..., Metric]

_FACTORIES: dict[str, MetricFactory] = {}
_PATH_OPTIONS: dict[str, tuple[str, ...]] = {}


def register_metric(
    name: str, *, runtime_options: tuple[str, ...] = (), path_options: tuple[str, ...] = ()
) -> Callable[[MetricFactory], MetricFactory]:
    """Register a metric factory under `name`.

    `runtime_options` (API keys, caches, clients) are accepted when building but never recorded,
    so they never reach a saved run; the caller passes them again when rebuilding.
    `path_options` name files or directories on the machine that builds the metric; a suite
    sent to the server may not set them.
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
        _PATH_OPTIONS[name] = path_options
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


def _custom_factory(name: str, policy: MetricPolicy) -> MetricFactory | None:
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        if not policy.allows_module(module_name):
            raise MetricError(
                f"custom metric {name!r} is not allowed here: a suite sent to the server may "
                f"name built-in metrics, metrics installed under the {ENTRY_POINT_GROUP!r} entry "
                "point group, and functions of the modules the operator lists in "
                "EVALHUB_METRIC_MODULES; run it on your own machine with `evalhub eval run "
                "--endpoint ...`, or ask the operator to install it"
            )
        if not attribute.isidentifier() or attribute.startswith("_"):
            raise MetricError(f"custom metric {name!r}: name a public function, module:function")
        try:
            module = importlib.import_module(module_name)
            factory = getattr(module, attribute)
        except (ImportError, AttributeError) as error:
            raise MetricError(f"custom metric {name!r} could not be loaded: {error}") from error
        # Only what the module itself defines: not a name it imported (`os`, `subprocess.run`).
        if getattr(factory, "__module__", None) != module_name:
            raise MetricError(
                f"custom metric {name!r}: {attribute} is not a metric factory defined in "
                f"{module_name}"
            )
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


def create_metric(name: str, *, policy: MetricPolicy = LOCAL, **options: Any) -> Metric:
    """Build a metric by registry name, `package.module:function`, or entry point name.

    `policy` says which names and options the caller may use; the default trusts the caller
    (the user's own machine).
    """
    factory = _FACTORIES.get(name) or _custom_factory(name, policy)
    if factory is None:
        raise MetricError(
            f"unknown metric {name!r}; known metrics: {', '.join(known_metrics())}. "
            f"Custom metrics are named 'package.module:function' or registered under the "
            f"{ENTRY_POINT_GROUP!r} entry point group"
        )
    if not policy.local_paths:
        for option in _PATH_OPTIONS.get(name, ()):
            if options.get(option) is not None:
                raise MetricError(
                    f"metric {name!r}: the option {option!r} names a path on the server, which "
                    "a suite sent over the API may not do; leave it out to use the server's "
                    "default, or run the suite on your own machine with --endpoint"
                )
    metric = factory(**options)
    metric.name = name
    return metric
