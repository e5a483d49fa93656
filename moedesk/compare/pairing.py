"""Finding a protocol comparison among arbitrary runs (the TUI's compare view).

Given run ids the user picked, `pair_runs` decides whether they are the runs of a fair
comparison: exactly two profiles (grouped by name, kind, [model] and [moe]), the same
seeds in both, and identical [train] and [data] apart from the seed and thread count.
`verdict_for_runs` then builds the manifest for them, so the view can show the verdict
without a manifest file. Anything else returns None: no verdict is better than a wrong one.
"""

from __future__ import annotations

import json

from moedesk.compare.protocol import protocol_differences
from moedesk.compare.results import CompareError, build_manifest
from moedesk.profiles import profile_from_dict
from moedesk.store import Reader
from moedesk.store.runs import ACTIVE


def _identity(config: dict) -> str:
    return json.dumps([config["name"], config["kind"], config["model"], config["moe"]],
                      sort_keys=True)


def pair_runs(reader: Reader, run_ids: list[int]) -> tuple[list[int], list[int]] | None:
    """(baseline ids, variant ids) ordered by seed, or None when the runs are not a
    finished protocol comparison. The dense group is the baseline; between two groups of
    the same kind, the one whose first run is older."""
    infos = [reader.run(i) for i in run_ids]
    if len(infos) < 2 or any(i.status in ACTIVE for i in infos):
        return None
    groups: dict[str, list] = {}
    for info in infos:
        groups.setdefault(_identity(info.config), []).append(info)
    if len(groups) != 2:
        return None
    first, second = sorted(groups.values(), key=lambda g: (g[0].kind != "dense",
                                                           min(i.id for i in g)))
    by_seed = [{int(i.row["seed"]): i for i in group} for group in (first, second)]
    if set(by_seed[0]) != set(by_seed[1]) or len(by_seed[0]) != len(first) \
            or len(by_seed[1]) != len(second):
        return None
    seeds = sorted(by_seed[0])
    reference = profile_from_dict(first[0].config)
    for info in infos:
        if protocol_differences(reference, profile_from_dict(info.config)):
            return None
    return ([by_seed[0][s].id for s in seeds], [by_seed[1][s].id for s in seeds])


def verdict_for_runs(reader: Reader, run_ids: list[int]) -> dict | None:
    """The comparison manifest of `run_ids` when they form a protocol comparison."""
    paired = pair_runs(reader, run_ids)
    if paired is None:
        return None
    try:
        return build_manifest(reader, *paired)
    except CompareError:
        return None
