"""`rare merge`: weight-space interpolation of two fine-tunes of the same base ("model soups",
WiSE-FT). A RARe model merged with the k=0 model of the same training keeps most of what examples
bring and most of the k=0 model's plain-query quality (README, Headline): each fine-tune moves the
shared base weights a little, and the average of two such moves is still a working model.

The merged model carries the first model's RARe settings (k, pooling, attention, budgets), so it is
queried as that model is, plus a record of the merge.
"""

from __future__ import annotations

from pathlib import Path

from rare.model import load_model
from trainer.output import write_model_dir


class MergeError(ValueError):
    pass


def interpolate(first: dict, second: dict, weight: float) -> dict:
    """`weight * first + (1 - weight) * second` for every floating tensor; other tensors (integer
    buffers such as position ids) are taken from `first`."""
    if first.keys() != second.keys():
        only = sorted(first.keys() ^ second.keys())[:3]
        raise MergeError(f"the models differ in architecture (parameters only in one: {', '.join(only)})")
    out = {}
    for key, a in first.items():
        b = second[key]
        if a.shape != b.shape:
            shapes = f"{tuple(a.shape)} vs {tuple(b.shape)}"
            raise MergeError(f"the models differ in architecture ({key}: {shapes})")
        out[key] = (weight * a.float() + (1 - weight) * b.float()).to(a.dtype) if a.is_floating_point() else a
    return out


def merge_models(first: str, second: str, weight: float, output: Path, device: str = "cpu") -> dict:
    """Write `weight * first + (1 - weight) * second` to `output`, with `first`'s RARe settings."""
    if not 0.0 < weight <= 1.0:
        raise MergeError(f"weight must be in (0, 1], got {weight}")
    a = load_model(first, device, cache=False)
    b = load_model(second, device, cache=False)
    a.st.load_state_dict(interpolate(a.st.state_dict(), b.st.state_dict(), weight))
    rare = a.rare.model_copy(deep=True)
    rare.training = {
        **(rare.training or {}),
        "merged": {"first": a.name, "second": b.name, "weight": weight, "second_rare": b.rare.model_dump()},
    }
    write_model_dir(a.st, rare, output)
    return {"output": str(output), "first": a.name, "second": b.name, "weight": weight}
