"""The output is JSON valid against a JSON Schema (Draft 2020-12); failures name their path."""

from __future__ import annotations

from typing import Any

from evalhub.eval.case import Case
from evalhub.eval.metrics._base import Metric, passed, per_case
from evalhub.eval.metrics._json import parse_json
from evalhub.eval.metrics._registry import register_metric
from evalhub.eval.record import Score


@register_metric("json_schema")
def json_schema(schema: dict[str, Any] | None = None, strip_fence: bool = True) -> Metric:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if schema is not None:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as error:
            raise ValueError(f"schema is not valid JSON Schema: {error.message}") from error
    shared = Draft202012Validator(schema) if schema is not None else None
    by_case: dict[str, Any] = {}

    def score(output: str, case: Case) -> Score:
        validator = shared
        if validator is None:
            if case.schema_ is None:
                return Score(value=None, explanation="no schema: give the option or a case schema")
            validator = by_case.get(case.id)
            if validator is None:
                validator = by_case[case.id] = Draft202012Validator(case.schema_)
        value, error = parse_json(output, strip_fence)
        if error is not None:
            return passed(False, error)
        errors = sorted(validator.iter_errors(value), key=lambda item: list(item.absolute_path))
        if not errors:
            return passed(True, "valid")
        messages = [f"{item.json_path}: {item.message}" for item in errors]
        return passed(False, "; ".join(messages[:5]), paths=[item.json_path for item in errors])

    return Metric(per_case(score), binary=True)
