"""The runs of an ablation: its (variant, seed) pairs as distinct training configs, in order.

Variants whose resolved configs are identical share one run (reported under every name);
a run that starts from another run's weights comes after it and is keyed by its key.
"""

from __future__ import annotations

from dataclasses import dataclass

from worldvla.ablation.config import VARIANTS, AblationConfig, level, resolve, run_key
from worldvla.train.config import TrainConfig


@dataclass(frozen=True)
class Run:
    key: str
    seed: int
    variants: tuple[str, ...]  # every variant name that resolves to this config
    train: TrainConfig
    world_eval: bool
    init: str | None = None  # key of the run whose weights this one starts from

    @property
    def policy_eval(self) -> bool:
        return self.train.use_action_data


def plan(cfg: AblationConfig) -> list[Run]:
    """Distinct runs in order. ``cfg.order == "seeds"``: every variant of seed 0, then of
    seed 1, ... (a partial ablation already compares every variant); ``"levels"``: every
    seed of the first level's variants, then of the next level (a partial study has whole
    levels). A run that starts from another run's weights comes after that run either way."""
    runs: dict[str, Run] = {}

    def add(name: str, seed: int) -> str:
        v = VARIANTS.get(name)
        init = add(v.init_from, seed) if v.init_from else None  # the run it starts from first
        t = resolve(cfg, name, seed)
        key = run_key(t, init)
        if key in runs:
            r = runs[key]
            names = r.variants if name in r.variants else (*r.variants, name)
            runs[key] = Run(key, seed, names, r.train, r.world_eval or v.world_eval, init)
        else:
            runs[key] = Run(key, seed, (name,), t, v.world_eval, init)
        return key

    if cfg.order == "levels":
        groups: dict[str, list[str]] = {}
        for name in cfg.variants:
            groups.setdefault(level(name), []).append(name)
        for names in groups.values():
            for seed in cfg.seeds:
                for name in names:
                    if seed in cfg.seeds_of(name):
                        add(name, seed)
    else:
        for seed in cfg.seeds:
            for name in cfg.variants:
                if seed in cfg.seeds_of(name):
                    add(name, seed)
    return list(runs.values())
