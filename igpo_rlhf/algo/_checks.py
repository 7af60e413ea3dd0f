"""Input checks shared by the algo modules: each raises ValueError naming the input and what is accepted."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def check_option(name: str, value: str, accepted: Sequence[str]) -> None:
    """Raise unless `value` is one of `accepted`."""
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not an option; accepted: {', '.join(map(repr, accepted))}")


def check_finite_floats(name: str, values: Sequence[float]) -> list[float]:
    """Return `values` as Python floats; raise if one is NaN/inf or not a real number."""
    out = []
    for k, v in enumerate(values):
        if isinstance(v, (str, bytes)):
            raise ValueError(f"{name}[{k}]={v!r} is a string; expected a real number")
        try:
            f = float(v)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}[{k}]={v!r} is not a real number") from err
        if not math.isfinite(f):
            raise ValueError(f"{name}[{k}]={f} is not finite; every value must be a finite float")
        out.append(f)
    return out


def check_unit_interval(name: str, value: float) -> None:
    """Raise unless 0 <= value <= 1 (discount factors, GAE lambda)."""
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name}={value!r} must be a number in [0, 1]")


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise unless all tensors are 2-D [B, L] with one common shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first_name, first = next(iter(shapes.items()))
    if len(first) != 2:
        raise ValueError(f"{first_name} has shape {list(first)}; expected a 2-D [B, L] tensor")
    for name, shape in shapes.items():
        if shape != first:
            raise ValueError(
                f"{name} has shape {list(shape)} but {first_name} has {list(first)}; all must be the same [B, L]"
            )


def check_finite_where(mask: torch.Tensor, **tensors: torch.Tensor) -> None:
    """Raise if a tensor holds NaN/inf at a position where `mask` is True (padding may hold anything)."""
    for name, t in tensors.items():
        bad = mask & ~torch.isfinite(t)
        if bool(bad.any()):
            b, j = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name}[{b}, {j}]={t[b, j].item()} is not finite at a masked-in position")
