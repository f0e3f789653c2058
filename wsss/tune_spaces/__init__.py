"""Ray Tune search spaces over the pipeline's config, one module per sweep, found by name.

A module here adds a space by decorating a function with `@register_space("name")`: given the
resolved base config (preset and `--set`s), it returns a `SearchSpace`, whose `params` map
config keys (dotted, as `--set` writes them) to a value, a Tune domain (`tune.grid_search`,
`tune.choice`, `tune.loguniform`, ...) or, for settings that go together, a dict of keys below
that one. `wsss tune --space NAME` finds every module of this package.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from wsss.platform.config import ConfigError, WsssConfig
from wsss.registry import Registry

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler

# What a column of the sweep's table shows for a trial, given the trial's parameters.
Column = tuple[str, Callable[[Mapping[str, Any]], str]]


@dataclass(frozen=True)
class SearchSpace:
    """One sweep: the config keys it varies and how its trials run and are compared.

    `trial` "pipeline" runs the whole method per trial and reports Table 2's rows;
    "classifier" trains step 1's classifier only, reporting its val macro-F1 every epoch, for
    `scheduler` (e.g. ASHA) to stop weak trials on `metric`. `columns` lay out the sweep's
    table (default: one per key of `params`); `num_samples` is how often Tune draws `params`
    (each draw runs every grid combination once).
    """

    name: str
    description: str
    params: Mapping[str, Any]
    trial: Literal["pipeline", "classifier"] = "pipeline"
    metric: str = "final_miou"
    mode: Literal["max", "min"] = "max"
    scheduler: Callable[[WsssConfig], TrialScheduler] | None = None
    num_samples: int = 1
    columns: tuple[Column, ...] = field(default_factory=tuple)


SpaceBuilder = Callable[[WsssConfig], SearchSpace]
_SPACES: Registry[SpaceBuilder] = Registry("search space")


def register_space(name: str) -> Callable[[SpaceBuilder], SpaceBuilder]:
    """Register `builder(base_config) -> SearchSpace` under `name`."""
    return _SPACES.register(name)


def space_modules() -> list[str]:
    """The modules of this package, each a space's home (found without importing them)."""
    return sorted(module.name for module in pkgutil.iter_modules(__path__))


def _discover() -> None:
    for name in space_modules():
        importlib.import_module(f"{__name__}.{name}")


def space_names() -> list[str]:
    _discover()
    return _SPACES.names()


def get_space(name: str, base: WsssConfig) -> SearchSpace:
    """The space `name` for `base`; an unknown name raises ConfigError listing the valid
    ones."""
    _discover()
    try:
        builder = _SPACES.get(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return builder(base)
