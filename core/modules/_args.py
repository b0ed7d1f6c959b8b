"""Constructor argument checks shared by the convolution-like modules (DCLS and delay convolutions)."""

from __future__ import annotations

__all__ = ["_tuple", "_check_channels"]


def _tuple(value, n: int, name: str) -> tuple[int, ...]:
    """``value`` as a tuple of ``n`` ints (an int is repeated); TypeError naming ``name`` otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    if isinstance(value, (tuple, list)) and len(value) == n and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise TypeError(f"{name}={value!r}: expected an int or a tuple of {n} ints.")


def _check_channels(in_channels, out_channels, groups) -> None:
    """Positive int channel counts and groups, with ``groups`` dividing both (ValueError otherwise)."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive int.")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}; "
            f"choose groups among the common divisors."
        )
