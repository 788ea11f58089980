"""utils/typecheck.py: a field's declared constraint gives the one-line message the configs have always given."""
from dataclasses import dataclass

import pytest

from utils.errors import ConfigError
from utils.typecheck import at_least, check_fields, choice, must, positive, ranged


@dataclass
class Example:
    rate: float = ranged(0, 1, high_open=True, default=0.5)
    steps: int = positive(1)
    cap: int | None = positive(None)
    warmup: int = at_least(0, 0)
    mode: str | None = choice("online", "offline", default=None)
    dtype: str = choice("bfloat16", "float32", default="float32")
    scale: float = must(lambda v: 0 < v <= 1, "0 < scale <= 1", 1.0)
    free: str = "anything"

    def __post_init__(self):
        check_fields(self, prefix="x.")


@pytest.mark.parametrize("change, message", [
    ({"rate": 1}, "x.rate: expected a value in [0, 1), got 1"),
    ({"rate": float("nan")}, "x.rate: expected a finite value in [0, 1), got nan"),
    ({"rate": "abc"}, "x.rate: expected a number, got 'abc'"),  # the annotation is checked first
    ({"steps": 0}, "x.steps: expected a positive integer, got 0"),
    ({"cap": 0}, "x.cap: expected a positive integer or null, got 0"),
    ({"warmup": -1}, "x.warmup: expected an integer >= 0, got -1"),
    ({"mode": "on"}, "x.mode: expected online, offline or null, got 'on'"),
    ({"dtype": "half"}, "x.dtype: expected bfloat16 or float32, got 'half'"),
    ({"scale": 0}, "x.scale: expected 0 < scale <= 1, got 0"),
    ({"steps": True}, "x.steps: expected an integer, got True"),
])
def test_a_bad_field_is_refused_with_its_message(change, message):
    with pytest.raises(ConfigError) as err:
        Example(**change)
    assert str(err.value) == message


def test_good_values_and_null_pass():
    assert Example(rate=0, steps=3, cap=None, mode=None).cap is None
    assert Example(cap=7, mode="offline", scale=0.5).mode == "offline"


@dataclass(frozen=True)
class Untyped:
    count: int = at_least(1, 1)
    name: str = must(lambda v: str(v).lower() in ("a", "b"), "a or b", "a")

    def __post_init__(self):
        check_fields(self, typed=False)  # the constraints' own tests cover the type


def test_without_the_annotation_check_the_constraint_names_what_was_expected():
    with pytest.raises(ConfigError, match=r"^count: expected an integer >= 1, got True$"):
        Untyped(count=True)
    with pytest.raises(ConfigError, match=r"^name: expected a or b, got 3$"):
        Untyped(name=3)
    assert Untyped(name="B").name == "B"
