from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from resilient_ws import Backoff, Failover, SendQueue

INVALID: list[tuple[type[Any], str, object]] = [
    (Backoff, "first_delay", -0.1),
    (Backoff, "first_delay", math.nan),
    (Backoff, "multiplier", 0.5),
    (Backoff, "max_delay", -1.0),
    (Backoff, "stable_after", -1.0),
    (Backoff, "max_attempts", 0),
    (Backoff, "max_elapsed", 0.0),
    (Backoff, "max_elapsed", -5.0),
    (Backoff, "max_retry_after", -1.0),
    (SendQueue, "max_messages", 0),
    (SendQueue, "max_bytes", 0),
    (SendQueue, "when_full", "block"),
    (Failover, "failback_after", 0.0),
    (Failover, "failback_after", -1.0),
]


@pytest.mark.parametrize(("cls", "field", "value"), INVALID)
def test_invalid_value_raises_value_error(cls: type[Any], field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        cls(**{field: value})


@pytest.mark.parametrize(
    ("cls", "values"),
    [
        (
            Backoff,
            {
                "first_delay": 0,
                "multiplier": 1,
                "max_delay": 0,
                "stable_after": 0,
                "max_attempts": 1,
                "max_elapsed": 0.001,
                "max_retry_after": 0,
            },
        ),
        (Backoff, {"max_attempts": None, "max_elapsed": None}),
        (SendQueue, {"max_messages": 1, "max_bytes": 1, "when_full": "drop_oldest"}),
        (SendQueue, {"when_full": "raise"}),
        (Failover, {"failback_after": None}),
    ],
)
def test_boundary_values_are_accepted(cls: type[Any], values: dict[str, object]) -> None:
    policy = cls(**values)
    assert {field: getattr(policy, field) for field in values} == values


@pytest.mark.parametrize(
    ("policy", "field", "value"),
    [
        (Backoff(), "max_delay", 1.0),
        (SendQueue(), "when_full", "raise"),
        (Failover(), "failback_after", None),
    ],
)
def test_policies_are_frozen(policy: object, field: str, value: object) -> None:
    before = getattr(policy, field)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(policy, field, value)
    assert getattr(policy, field) == before


@pytest.mark.parametrize(("cls", "value"), [(Backoff, 0.1), (SendQueue, 10), (Failover, 60.0)])
def test_policies_are_keyword_only(cls: type[Any], value: object) -> None:
    with pytest.raises(TypeError):
        cls(value)


@pytest.mark.parametrize("cls", [Backoff, SendQueue, Failover])
def test_policies_are_slotted(cls: type[Any]) -> None:
    assert not hasattr(cls(), "__dict__")


def test_replace_validates() -> None:
    assert dataclasses.replace(Backoff(), max_delay=5.0).max_delay == 5.0
    with pytest.raises(ValueError, match="max_delay"):
        dataclasses.replace(Backoff(), max_delay=-5.0)
