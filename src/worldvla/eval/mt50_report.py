"""The Meta-World MT50 comparison table under LeRobot's protocol (``eval-policy --protocol lerobot-mt50``).

From the episodes of one ``evaluate_policy`` run (the policy and its baselines), per agent:
success per task, per LeRobot difficulty group (pooled over the group's episodes, as
``lerobot-eval`` reports a group), and the mean of the four group rates (the "Avg." of the
SmolVLA paper), each with a 95% interval (Wilson; for the mean of groups at Kish's effective
sample size, ``worldvla.eval.stats.weighted_wilson_interval``). Published rows are printed
beside them, labelled as published, with their source and how their protocol differs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worldvla.envs.mt50 import (
    DIFFICULTY_GROUPS,
    EPISODES_PER_TASK,
    LEROBOT_METAWORLD_PIN,
    LEROBOT_SOURCE,
    MAX_STEPS,
    MT50_TASKS,
    RENDER_SIZE,
    difficulty,
    eval_seeds,
)
from worldvla.eval.stats import weighted_wilson_interval, wilson_interval
from worldvla.utils.io import atomic_write_text

GROUP_TITLES = {"easy": "easy", "medium": "medium", "hard": "hard", "very_hard": "very hard"}


@dataclass(frozen=True)
class PublishedRow:
    policy: str
    groups: tuple[float, float, float, float]  # easy, medium, hard, very hard (% success)
    mean: float  # mean of the four groups, as published
    source: str
    protocol: str  # how the run behind the number differs from this project's


_SMOLVLA = "Shukor et al. 2025, SmolVLA, arXiv 2506.01844, Table 2"
_SMOLVLA_PROTOCOL = (
    "trained on lerobot/metaworld_mt50 (with the 4-d state), 10 episodes per task; the paper "
    "(June 2025) predates LeRobot's Meta-World env (Oct 2025) and its seeded placements (Jul 2026), "
    "so its episodes ran on other placements"
)
_TINYVLA = "Wen et al. 2024, TinyVLA, arXiv 2409.12514, Table I (repeated in SmolVLA's Table 2)"
_TINYVLA_PROTOCOL = "TinyVLA's own Meta-World setup and data, not LeRobot's"

# Published Meta-World MT50 results (success %, easy / medium / hard / very hard, mean of groups).
PUBLISHED: tuple[PublishedRow, ...] = (
    PublishedRow("SmolVLA (2.25B)", (87.14, 51.82, 70.0, 64.0), 68.24, _SMOLVLA, _SMOLVLA_PROTOCOL),
    PublishedRow("SmolVLA (0.45B)", (82.5, 41.8, 45.0, 60.0), 57.3, _SMOLVLA, _SMOLVLA_PROTOCOL),
    PublishedRow("SmolVLA (0.24B)", (86.43, 46.36, 35.0, 60.0), 56.95, _SMOLVLA, _SMOLVLA_PROTOCOL),
    PublishedRow(
        "π0 (PaliGemma-3B init., no robot pretraining)",
        (80.4, 40.9, 36.7, 44.0),
        50.5,
        _SMOLVLA,
        _SMOLVLA_PROTOCOL,
    ),
    PublishedRow("π0 (3.5B, robot-pretrained)", (71.8, 48.2, 41.7, 30.0), 47.9, _SMOLVLA, _SMOLVLA_PROTOCOL),
    PublishedRow("TinyVLA-H", (77.6, 21.5, 11.4, 15.8), 31.6, _TINYVLA, _TINYVLA_PROTOCOL),
    PublishedRow("Diffusion Policy", (23.1, 10.7, 1.9, 6.1), 10.5, _TINYVLA, _TINYVLA_PROTOCOL),
)


def _rate(k: int, n: int) -> dict[str, float]:
    lo, hi = wilson_interval(k, n)
    return {"success": k / n, "ci_low": lo, "ci_high": hi, "successes": k, "episodes": n}


def grouped(episodes: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per agent: ``tasks`` and ``groups`` (success, Wilson interval, counts) and ``mean``
    (mean of the group rates of the groups evaluated, with its interval) from episode records
    (``EpisodeResult`` dicts: agent, task, success)."""
    out: dict[str, dict[str, Any]] = {}
    for agent in dict.fromkeys(e["agent"] for e in episodes):
        counts: dict[str, list[int]] = {}
        for e in episodes:
            if e["agent"] == agent:
                c = counts.setdefault(e["task"], [0, 0])
                c[0] += bool(e["success"])
                c[1] += 1
        tasks = {t: _rate(k, n) for t, (k, n) in counts.items()}
        groups: dict[str, dict[str, float]] = {}
        for group in DIFFICULTY_GROUPS:
            members = [counts[t] for t in counts if difficulty(t) == group]
            if members:
                groups[group] = _rate(sum(k for k, _ in members), sum(n for _, n in members))
                groups[group]["tasks"] = len(members)
        mean, lo, hi = weighted_wilson_interval(
            [int(g["successes"]) for g in groups.values()], [int(g["episodes"]) for g in groups.values()]
        )
        out[agent] = {
            "tasks": tasks,
            "groups": groups,
            "mean": {"success": mean, "ci_low": lo, "ci_high": hi, "groups": len(groups)},
        }
    return out


def expert_success(episodes_path: str | Path | None) -> dict[str, dict[str, int]]:
    """Per task, the scripted expert's successes and tries on the training seeds, from the
    ``kept`` / ``dropped`` counts ``worldvla collect`` records in the episode file (empty
    when there is no file or it records none): does a task fail because its data is thin?"""
    if episodes_path is None:
        return {}
    from worldvla.data.collect import recorded_counts
    from worldvla.data.episodes import EpisodeReader

    with EpisodeReader(episodes_path) as reader:
        kept, dropped = recorded_counts(reader.file_attrs)
    return {t: {"kept": k, "tries": k + dropped.get(t, 0)} for t, k in kept.items()}


# An expert that kept fewer of its tries than this gave its task thin or biased data.
WEAK_EXPERT = 0.9


def experts_vs_policy(
    tasks: Mapping[str, Mapping[str, float]], experts: Mapping[str, Mapping[str, int]]
) -> dict[str, Any] | None:
    """Whether the scripted experts' failures explain where the policy fails, over the tasks
    that have both a policy rate (``grouped(...)[agent]["tasks"]``) and expert counts:
    Spearman's rank correlation of the two per-task rates (scipy), and the policy's mean
    success on the tasks whose expert kept < :data:`WEAK_EXPERT` of its tries against the
    others. None without expert counts."""
    both = [t for t in tasks if t in experts and experts[t]["tries"] > 0]
    if not both:
        return None
    expert = {t: experts[t]["kept"] / experts[t]["tries"] for t in both}
    policy = {t: float(tasks[t]["success"]) for t in both}
    weak = [t for t in both if expert[t] < WEAK_EXPERT]
    strong = [t for t in both if expert[t] >= WEAK_EXPERT]
    rho = p_value = None
    if len(both) >= 3 and len(set(expert.values())) > 1 and len(set(policy.values())) > 1:
        from scipy.stats import spearmanr

        res = spearmanr([expert[t] for t in both], [policy[t] for t in both])
        rho, p_value = float(res.statistic), float(res.pvalue)

    def mean(ts: list[str]) -> float | None:
        return sum(policy[t] for t in ts) / len(ts) if ts else None

    return {
        "tasks": len(both),
        "spearman": rho,
        "p_value": p_value,
        "weak_threshold": WEAK_EXPERT,
        "weak_experts": {t: expert[t] for t in sorted(weak)},
        "policy_on_weak": mean(weak),
        "policy_on_strong": mean(strong),
        "policy_failing": {t: expert[t] for t in sorted(both) if policy[t] == 0.0},
    }


def protocol_differences(meta: Mapping[str, Any]) -> list[str]:
    """How the run described by ``meta`` (``evaluate_policy``'s) differs from LeRobot's protocol."""
    suite = meta.get("suite", {})
    res = suite.get("resolution")
    out = []
    if suite.get("max_steps") != MAX_STEPS:
        out.append(
            f"**CUT SHORT: at most {suite.get('max_steps')} steps per episode (protocol: {MAX_STEPS})** "
            "— these numbers are not comparable with the published ones"
        )
    tasks = suite.get("tasks", [])
    if sorted(tasks) != sorted(MT50_TASKS):
        out.append(
            f"**only {len(tasks)} of the 50 tasks**; group means over the tasks evaluated, the mean over "
            "the groups evaluated"
        )
    seeds = [v for _, v in zip(range(meta.get("episodes_per_task", 0)), suite.get("test_variations", []))]
    if meta.get("episodes_per_task") != EPISODES_PER_TASK or tuple(seeds) != eval_seeds():
        out.append(
            f"{meta.get('episodes_per_task')} episodes per task on seeds {suite.get('test_variations')} "
            f"(protocol: {EPISODES_PER_TASK} on seeds {eval_seeds()[0]}-{eval_seeds()[-1]})"
        )
    render = "fast rendering (no shadows, multisampling or reflections)" if suite.get("fast_render") else ""
    out.append(
        f"frames fed to the model: {res}x{res} rendered directly{', ' + render if render else ''} "
        f"(LeRobot: {RENDER_SIZE}x{RENDER_SIZE}, Meta-World's default rendering)"
    )
    out.append(
        f"Meta-World {meta.get('metaworld_version', '?')} (LeRobot pins {LEROBOT_METAWORLD_PIN}; 3.1 adds "
        "corner4, render sizes and a dense-reward fix, success checks unchanged)"
    )
    out.append(
        "trained on the project's scripted-expert demonstrations (seeds disjoint from the evaluation's), "
        "not on lerobot/metaworld_mt50; the policy reads "
        + (
            "the frame, the instruction and the 4-d state"
            if meta.get("policy", {}).get("reads_state")
            else "the frame and the instruction, not the state"
        )
    )
    return out


def _cell(r: Mapping[str, float] | None) -> str:
    if r is None:
        return "—"
    return f"{100 * r['success']:.1f} [{100 * r['ci_low']:.0f}, {100 * r['ci_high']:.0f}]"


def render_markdown(table: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    agents: dict[str, Any] = table["agents"]
    head = "| | " + " | ".join(f"{GROUP_TITLES[g]} ({len(DIFFICULTY_GROUPS[g])})" for g in DIFFICULTY_GROUPS)
    lines = [
        "# Meta-World MT50 under LeRobot's evaluation protocol",
        "",
        f"Protocol: {LEROBOT_SOURCE} (docs/metaworld.md). Success % with 95% intervals (Wilson; the "
        "mean of the groups at Kish's effective sample size).",
        "",
        "Differences from LeRobot's protocol in this run:",
        "",
        *[f"- {d}" for d in table["differences"]],
        "",
        "## Groups",
        "",
        head + " | mean of groups |",
        "|---|" + "---|" * (len(DIFFICULTY_GROUPS) + 1),
    ]
    for agent, r in agents.items():
        cells = [_cell(r["groups"].get(g)) for g in DIFFICULTY_GROUPS]
        lines.append(f"| **{agent}** (this run) | " + " | ".join(cells) + f" | **{_cell(r['mean'])}** |")
    for p in PUBLISHED:
        lines.append(
            f"| {p.policy} (published) | " + " | ".join(f"{x:g}" for x in p.groups) + f" | {p.mean:g} |"
        )
    lines += ["", "Published rows are copied from their papers, not re-run here:", ""]
    for source in dict.fromkeys(p.source for p in PUBLISHED):
        rows = [p for p in PUBLISHED if p.source == source]
        lines.append(f"- {', '.join(p.policy for p in rows)}: {source}; {rows[0].protocol}.")
    tasks = list(dict.fromkeys(t for r in agents.values() for t in r["tasks"]))
    experts: Mapping[str, Mapping[str, int]] = table.get("experts") or {}
    expert_head = " expert on training seeds (demonstrations kept / tries) |" if experts else ""
    lines += [
        "",
        "## Tasks",
        "",
        "| task | group | " + " | ".join(agents) + " |" + expert_head,
        "|---|---|" + "---|" * (len(agents) + bool(experts)),
    ]
    for t in sorted(tasks, key=lambda t: (list(DIFFICULTY_GROUPS).index(difficulty(t)), t)):
        cells = [_cell(r["tasks"].get(t)) for r in agents.values()]
        if experts:
            e = experts.get(t)
            cells.append(f"{e['kept']} / {e['tries']}" if e else "—")
        lines.append(f"| {t} | {GROUP_TITLES[difficulty(t)]} | " + " | ".join(cells) + " |")
    lines += _experts_section(table, agents)
    machine = meta.get("machine", {})
    lines += [
        "",
        f"Command: `{meta.get('command', '?')}`; checkpoint `{meta.get('checkpoint')}`, commit "
        f"`{meta.get('commit', '?')}`, {machine.get('processor', '?')} with {machine.get('cpus', '?')} CPUs, "
        f"{meta.get('wall_seconds', 0) / 60:.1f} minutes for all agents.",
    ]
    return "\n".join(lines) + "\n"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _experts_section(table: Mapping[str, Any], agents: Mapping[str, Any]) -> list[str]:
    ana = table.get("experts_vs_policy")
    if not ana:
        return []
    agent = next(iter(agents))
    rho = "—" if ana["spearman"] is None else f"{ana['spearman']:+.2f} (p = {ana['p_value']:.2g})"
    weak = ", ".join(f"{t} {_pct(r)}" for t, r in ana["weak_experts"].items()) or "none"
    failing = ", ".join(f"{t} (expert {_pct(r)})" for t, r in ana["policy_failing"].items()) or "none"
    return [
        "",
        "## Do the experts' failures explain the failing tasks?",
        "",
        f"Over the {ana['tasks']} tasks, Spearman's rank correlation of the expert's success on the "
        f"training seeds with **{agent}**'s success: {rho}. {agent}'s mean success on the tasks whose "
        f"expert kept < {100 * ana['weak_threshold']:.0f}% of its tries: {_pct(ana['policy_on_weak'])}% "
        f"({len(ana['weak_experts'])} tasks); on the others: {_pct(ana['policy_on_strong'])}%.",
        "",
        f"- Experts under {100 * ana['weak_threshold']:.0f}% (kept / tries, %): {weak}.",
        f"- Tasks {agent} never solved (the expert's %): {failing}.",
    ]


def write_mt50_report(
    out_dir: str | Path, doc: Mapping[str, Any], episodes_path: str | Path | None = None
) -> dict[str, Any]:
    """Write ``mt50.json`` and ``mt50.md`` into ``out_dir`` from an ``evaluate_policy`` document;
    with the training ``episodes_path``, the experts' success per task beside the results."""
    meta = dict(doc["meta"])
    if "metaworld_version" not in meta:
        from importlib.metadata import PackageNotFoundError, version

        try:
            meta["metaworld_version"] = version("metaworld")
        except PackageNotFoundError:
            meta["metaworld_version"] = "?"
    agents = grouped(doc["episodes"])
    experts = expert_success(episodes_path)
    table = {
        "agents": agents,
        "differences": protocol_differences(meta),
        "published": [p.__dict__ for p in PUBLISHED],
        "experts": experts,
        # the first agent is the policy, the baselines follow (evaluate_policy's order)
        "experts_vs_policy": experts_vs_policy(next(iter(agents.values()))["tasks"], experts)
        if agents
        else None,
        "meta": meta,
    }
    out = Path(out_dir)
    atomic_write_text(out / "mt50.json", json.dumps(table, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "mt50.md", render_markdown(table, meta))
    return table
