"""Check a config dataclass against its own annotations, so that a mistyped value stops a run at start
with one line (`lr=abc`, `ema=maybe`) instead of a traceback at the first step that uses it."""
import math
import types
import typing
from dataclasses import fields

from utils.errors import ConfigError


def from_config(cls, cfg: dict, config_file: str, what: str = "config key"):
    """cls(**cfg), refusing first a key that is not one of its fields (the known keys are in `config_file`)."""
    unknown = sorted(set(cfg) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown {what} (see {config_file} for the known keys)")
    return cls(**cfg)


def check_types(instance, prefix: str = "") -> None:
    """Every field must match its annotation: bool is only true/false, int is not a bool, float also takes
    an int, `X | None` takes null. Raises ConfigError naming `prefix + field`."""
    for field in fields(instance):
        value = getattr(instance, field.name)
        if not _matches(value, field.type):
            raise ConfigError(f"{prefix}{field.name}: expected {_describe(field.type)}, got {value!r}")


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


def check_range(prefix: str, key: str, value, low=None, high=None, low_open=False, high_open=False) -> None:
    """`low <= value <= high` (strict where `*_open`); either bound may be None. NaN and infinities are
    refused too (a bound of None is open: `lr=inf` is not in (0, inf))."""
    not_finite = isinstance(value, float) and not math.isfinite(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not_finite or too_low or too_high:
        left = "(-inf" if low is None else f"{'(' if low_open else '['}{low}"
        right = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
        interval = f"{left}, {right}"
        raise ConfigError(f"{prefix}{key}: expected a {'finite ' if not_finite else ''}value in {interval}, got {value!r}")
