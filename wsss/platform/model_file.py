"""The files the steps save their models and Ray Train its checkpoints in: a `torch.save` of a
dict of tensors and plain values, read back with `weights_only=True`, so that a file that asks
to run code is refused instead of run. A step's model file holds the weights under "model" and
beside them what rebuilds the network (backbone or encoder name, classes, ...)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


class ModelFileError(RuntimeError):
    """A saved model or checkpoint cannot be read; the message names the file."""


def load_model_file(path: Path | str) -> dict[str, Any]:
    """The dict saved at `path`, on the CPU. A missing file raises FileNotFoundError; a file
    that is truncated, damaged or holds more than tensors and plain values raises
    `ModelFileError` naming it and what to do."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelFileError(
            f"{path} cannot be read as a saved model ({type(error).__name__}: {reason}): it is "
            f"truncated, damaged, or holds more than tensors and plain values; remove the "
            f"folder that holds it ({Path(path).resolve().parent}) and run the same command again, "
            f"which makes it anew"
        ) from error


def save_model_file(path: Path, state: dict[str, torch.Tensor], **metadata: Any) -> None:
    """Save a step's model at `path`: its weights `state` and the plain values in `metadata`
    that `load_model` hands its `build` to make the network again."""
    torch.save({"model": state, **metadata}, path)


def load_model(
    path: Path | str, build: Callable[[dict[str, Any]], nn.Module], device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """(the network `build(saved)` makes from the file's metadata, with the saved weights, in
    eval mode on `device`; the file's whole dict)."""
    saved = load_model_file(path)
    model = build(saved)
    model.load_state_dict(saved["model"])
    return model.to(device).eval(), saved
