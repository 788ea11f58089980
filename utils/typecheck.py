"""Check a config dataclass against its own fields, so that a wrong value stops a run at start with one line
(`lr=abc`, `ema=maybe`, `lr=-1`) instead of a traceback at the first step that uses it.

A field declares its constraint once, beside its type, and check_fields checks them all:
    lr: float = ranged(0, low_open=True)        # 'lr: expected a value in (0, inf), got -1'
    epochs: int = positive()                    # 'epochs: expected a positive integer, got 0'
    wandb_mode: str | None = choice("online", "offline", "disabled")
    lambda_: float = must(lambda v: 0 < v <= 1, "0 < lambda_ <= 1", default=0.95)
A field that takes None (`X | None`) is not checked when it is None. Checks between fields stay explicit code.
"""
import math
import types
import typing
from dataclasses import MISSING, field, fields

from utils.errors import ConfigError


def from_config(cls, cfg: dict, config_file: str, what: str = "config key"):
    """cls(**cfg), refusing first a key that is not one of its fields (the known keys are in `config_file`)."""
    unknown = sorted(set(cfg) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown {what} (see {config_file} for the known keys)")
    return cls(**cfg)


def must(test, expected, default=MISSING, got=repr):
    """A field whose value passes `test`, else '<key>: expected <expected>, got <got(value)>'. `expected` may
    be a function of (value, whether the field takes None)."""
    return field(default=default, metadata={"test": test, "expected": expected, "got": got})


def ranged(low=None, high=None, low_open=False, high_open=False, default=MISSING):
    """A finite number in [low, high] (open where `*_open`; a bound of None is open: inf is not in (0, inf))."""
    return must(lambda v: _range_problem(v, low, high, low_open, high_open) is None,
                lambda v, _: _range_problem(v, low, high, low_open, high_open), default)


def positive(default=MISSING):
    """An integer >= 1 ('a positive integer', '... or null' where the field takes None)."""
    return must(lambda v: isinstance(v, int) and v >= 1, lambda v, null: "a positive integer" + " or null" * null, default)


def at_least(low: int, default=MISSING):
    """An integer (not a bool) >= low."""
    return must(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low, f"an integer >= {low}", default)


def choice(*options, default=MISSING):
    """One of `options`, named 'a, b or c' ('a, b, c or null' where the field takes None)."""
    def expected(value, null):
        names = [*options, *(["null"] if null else [])]
        return ", ".join(names[:-1]) + " or " + names[-1]
    return must(lambda v: v in options, expected, default)


def check_fields(instance, prefix: str = "", typed: bool = True) -> None:
    """Every field's type (unless `typed` is false: the tests of its constraints then include the type), then
    every field's constraint, in field order. Raises ConfigError naming `prefix + field`."""
    if typed:
        _check_types(instance, prefix)
    for f in fields(instance):
        value, test, nullable = getattr(instance, f.name), f.metadata.get("test"), _matches(None, f.type)
        if test is None or (value is None and nullable) or test(value):
            continue
        expected = f.metadata["expected"]
        expected = expected(value, nullable) if callable(expected) else expected
        raise ConfigError(f"{prefix}{f.name}: expected {expected}, got {f.metadata['got'](value)}")


def _check_types(instance, prefix: str) -> None:
    """Every field must match its annotation: bool is only true/false, int is not a bool, float also takes
    an int, `X | None` takes null."""
    for field_ in fields(instance):
        value = getattr(instance, field_.name)
        if not _matches(value, field_.type):
            raise ConfigError(f"{prefix}{field_.name}: expected {_describe(field_.type)}, got {value!r}")


def _matches(value, annotation) -> bool:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_matches(value, option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(annotation) or annotation)


def _describe(annotation) -> str:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " or ".join(_describe(option) for option in typing.get_args(annotation))
    names = {type(None): "null", bool: "true/false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping"}
    return names.get(typing.get_origin(annotation) or annotation, getattr(annotation, "__name__", str(annotation)))


def _range_problem(value, low, high, low_open, high_open) -> str | None:
    """What a number outside [low, high] was expected to be ('a value in (0, inf)'), or None when inside."""
    not_finite = isinstance(value, float) and not math.isfinite(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not (not_finite or too_low or too_high):
        return None
    left = "(-inf" if low is None else f"{'(' if low_open else '['}{low}"
    right = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
    return f"a {'finite ' if not_finite else ''}value in {left}, {right}"
