"""Cross-field rules: constraints that involve more than one key of a profile.

Single-key types and ranges are declared in `schema.py`; everything that needs
two keys (or the file system) lives here, one small function per section, and so does
the check of a profile's `[health.RULE]` overrides against the health part's one table
(`moedesk.health.thresholds.RULES`): health knows nothing of profiles.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from moedesk.data.manifest import ManifestError, dataset_files
from moedesk.health.thresholds import RULES
from moedesk.profiles.dist_rules import dist_problems
from moedesk.profiles.errors import Problem
from moedesk.profiles.schema import KEEP_BEST, Profile


def _model_problems(p: Profile) -> list[Problem]:
    m, out = p.model, []
    if m.dim % m.n_heads:
        out.append(Problem("model.dim", f"got {m.dim}; must be divisible by model.n_heads ({m.n_heads})"))
    elif (m.dim // m.n_heads) % 2:
        out.append(Problem("model.dim", f"got {m.dim}; dim / n_heads = {m.dim // m.n_heads} must be "
                                        "even for rotary embeddings"))
    if m.n_heads % m.n_kv_heads:
        out.append(Problem("model.n_kv_heads", f"got {m.n_kv_heads}; must divide model.n_heads "
                                               f"({m.n_heads})"))
    if p.data.seq_len > m.max_seq_len:
        out.append(Problem("data.seq_len", f"got {p.data.seq_len}; must be <= model.max_seq_len "
                                           f"({m.max_seq_len})"))
    if p.data.source == "grammar" and m.vocab_size < 256:
        out.append(Problem("model.vocab_size", f"got {m.vocab_size}; byte-level data needs >= 256"))
    return out


def _moe_problems(p: Profile) -> list[Problem]:
    e, out = p.moe, []
    if e.top_k > e.num_experts:
        out.append(Problem("moe.top_k", f"got {e.top_k}; must be <= moe.num_experts ({e.num_experts})"))
    n_layers = p.model.n_layers
    bad = [i for i in e.moe_layers if not 0 <= i < n_layers]
    if bad:
        out.append(Problem("moe.moe_layers", f"got {e.moe_layers}; indices must be in 0..{n_layers - 1} "
                                             f"(model.n_layers = {n_layers})"))
    if len(set(e.moe_layers)) != len(e.moe_layers):
        out.append(Problem("moe.moe_layers", f"got {e.moe_layers}; indices must be distinct"))
    if not e.moe_layers and e.skip_first_n_moe >= n_layers:
        out.append(Problem("moe.skip_first_n_moe", f"got {e.skip_first_n_moe}; must be < model.n_layers "
                                                   f"({n_layers}) so at least one block is MoE"))
    if 0 < e.capacity_factor < 1.0 / e.num_experts:
        out.append(Problem("moe.capacity_factor", f"got {e.capacity_factor}; 0 (dropless) or >= "
                                                  f"1/num_experts"))
    return out


def _ternary_problems(p: Profile) -> list[Problem]:
    t, out = p.ternary, []
    if t.active_experts > t.num_experts:
        out.append(Problem("ternary.active_experts", f"got {t.active_experts}; must be <= "
                                                     f"ternary.num_experts ({t.num_experts})"))
    # Validate243Config: 243 experts need two-level selection (K <= 32 is the schema's range)
    if t.num_experts == 243 and t.topology != "hierarchical":
        out.append(Problem("ternary.topology", f"got {t.topology!r}; 243 experts need "
                                               "'hierarchical' selection (Validate243Config)"))
    if t.topology == "hierarchical":
        # clusters are consecutive runs of cluster_size ids, so they cover every expert;
        # only the last one may be short, and the K experts must fit in any chosen clusters
        num_clusters = math.ceil(t.num_experts / t.cluster_size)
        last = t.num_experts - (num_clusters - 1) * t.cluster_size
        if t.cluster_size > t.num_experts:
            out.append(Problem("ternary.cluster_size", f"got {t.cluster_size}; must be <= "
                                                       f"ternary.num_experts ({t.num_experts})"))
        elif num_clusters < 2:
            out.append(Problem("ternary.cluster_size", f"got {t.cluster_size}; makes a single "
                                                       "cluster, use topology = 'flat'"))
        elif t.active_clusters >= num_clusters:
            out.append(Problem("ternary.active_clusters",
                               f"got {t.active_clusters}; must be < the {num_clusters} clusters "
                               f"(ceil({t.num_experts} / {t.cluster_size})), else level 1 keeps "
                               "every cluster"))
        else:
            smallest = min(last + (t.active_clusters - 1) * t.cluster_size,
                           t.active_clusters * t.cluster_size)
            if smallest < t.active_experts:
                out.append(Problem("ternary.active_clusters",
                                   f"got {t.active_clusters}; the smallest {t.active_clusters} "
                                   f"clusters hold {smallest} experts (cluster_size "
                                   f"{t.cluster_size}, last cluster {last}), fewer than "
                                   f"active_experts ({t.active_experts})"))
            too_many = [k for k in t.active_experts_schedule if k > smallest]
            if too_many:
                out.append(Problem("ternary.active_experts_schedule",
                                   f"got {t.active_experts_schedule}; the smallest "
                                   f"{t.active_clusters} clusters hold {smallest} experts, "
                                   f"fewer than {max(too_many)}"))
    if p.data.source == "tokens":
        out.append(Problem("data.source", "got 'tokens'; ternary runs read 'grammar', 'text' or "
                                          "'trits'"))
    kinds = {s.get("source", "grammar") for s in p.data.sources} or {p.data.source}
    if t.negatives == "shuffle_words" and ("trits" in kinds or t.encoding != "balanced"):
        what = ("a 'trits' source" if "trits" in kinds else f"ternary.encoding = {t.encoding!r}")
        out.append(Problem("ternary.negatives", f"got 'shuffle_words' with {what}; word "
                                                "shuffles need text in the 'balanced' encoding "
                                                "(use 'shuffle' or 'hybrid')"))
    if t.negatives == "hybrid" and p.train.batch_size < 2:
        out.append(Problem("ternary.negatives", f"got 'hybrid' with train.batch_size = "
                                                f"{p.train.batch_size}; a hybrid splices two "
                                                "samples of a batch, so batches need >= 2"))
    out += _schedule_problems(p) + _curriculum_problems(p, kinds)
    if p.train.device == "cuda":
        out.append(Problem("train.device", "got 'cuda'; ternary runs are CPU-only (use 'auto' "
                                           "or 'cpu')"))
    if p.train.grad_accum != 1:
        out.append(Problem("train.grad_accum", f"got {p.train.grad_accum}; a ternary step is "
                                               "one batch (Hebbian updates have no gradients "
                                               "to accumulate); use 1"))
    return out


def _schedule_problems(p: Profile) -> list[Problem]:
    t, out = p.ternary, []
    schedule, at = t.active_experts_schedule, t.active_experts_at
    if len(schedule) != len(at):
        out.append(Problem("ternary.active_experts_at", f"got {at}; needs one step per "
                                                        f"active_experts_schedule entry "
                                                        f"({len(schedule)})"))
    elif at and (at[0] < 1 or any(b <= a for a, b in zip(at, at[1:], strict=False))
                 or at[-1] > p.train.steps):
        out.append(Problem("ternary.active_experts_at", f"got {at}; steps must increase and "
                                                        f"lie in 1..train.steps "
                                                        f"({p.train.steps})"))
    top = min(32, t.num_experts)
    if any(not 1 <= k <= top for k in schedule):
        out.append(Problem("ternary.active_experts_schedule",
                           f"got {schedule}; each entry must be in 1..{top} (<= 32 and <= "
                           "ternary.num_experts)"))
    return out


def _curriculum_problems(p: Profile, kinds: set[str]) -> list[Problem]:
    t, out = p.ternary, []
    if t.curriculum_phases == 1:
        return out
    if t.curriculum_phases > p.train.steps:
        out.append(Problem("ternary.curriculum_phases", f"got {t.curriculum_phases}; must be "
                                                        f"<= train.steps ({p.train.steps})"))
    if t.curriculum_by == "length" and kinds != {"trits"}:
        out.append(Problem("ternary.curriculum_by", "got 'length'; text windows all have the "
                                                    "same length, so only trit-file sources "
                                                    "can be ordered by it (use 'typicality' "
                                                    "or 'scores')"))
    if t.curriculum_by == "scores":
        if p.data.sources:
            out.append(Problem("ternary.curriculum_by", "got 'scores' with [[data.sources]]; "
                                                        "a scores file orders one source"))
        if not t.curriculum_scores:
            out.append(Problem("ternary.curriculum_scores", "missing; curriculum_by = 'scores' "
                                                            "needs a file"))
        elif not _resolve(p, t.curriculum_scores).is_file():
            out.append(Problem("ternary.curriculum_scores",
                               f"got {t.curriculum_scores!r}; no such file "
                               f"({_resolve(p, t.curriculum_scores)})"))
    return out


SOURCE_KEYS = ("name", "source", "path", "weight", "grammar_seed", "grammar_sentences")
SOURCE_KINDS = ("grammar", "text", "trits")


def _source_problems(p: Profile) -> list[Problem]:
    """Each [[data.sources]] entry: known keys, a unique metric-safe name, a readable file."""
    out: list[Problem] = []
    names: set[str] = set()
    if p.data.sources and p.kind != "ternary":
        return [Problem("data.sources", f"got {len(p.data.sources)} sources; only ternary runs "
                                        f"read a source mix (kind = {p.kind!r})")]
    for i, entry in enumerate(p.data.sources):
        key = f"data.sources[{i}]"
        for extra in sorted(set(entry) - set(SOURCE_KEYS)):
            out.append(Problem(f"{key}.{extra}", "unknown key; allowed keys: "
                                                 + ", ".join(SOURCE_KEYS)))
        name = entry.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            out.append(Problem(f"{key}.name", f"got {name!r}; required: letters, digits, "
                                              "'_', '.' or '-' (it names the source's metrics)"))
        elif name in names:
            out.append(Problem(f"{key}.name", f"got {name!r}; names must be unique"))
        else:
            names.add(name)
        kind = entry.get("source", "grammar")
        if kind not in SOURCE_KINDS:
            out.append(Problem(f"{key}.source", f"got {kind!r}; allowed values: "
                                                + ", ".join(repr(k) for k in SOURCE_KINDS)))
        elif kind != "grammar":
            path = entry.get("path")
            if not isinstance(path, str) or not path:
                out.append(Problem(f"{key}.path", f"missing; source = {kind!r} needs a file"))
            elif not _resolve(p, path).is_file():
                out.append(Problem(f"{key}.path", f"got {path!r}; no such file "
                                                  f"({_resolve(p, path)})"))
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
                math.isfinite(weight) and weight > 0):
            out.append(Problem(f"{key}.weight", f"got {weight!r}; must be a number > 0"))
        for field, lo, hi in (("grammar_seed", 0, 2**31 - 1),
                              ("grammar_sentences", 100, 10_000_000)):
            value = entry.get(field, lo)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                out.append(Problem(f"{key}.{field}", f"got {value!r}; must be an integer "
                                                     f"between {lo} and {hi}"))
    return out


def _resolve(p: Profile, path: str) -> Path:
    """A path from the profile, relative to the profile's folder."""
    out = Path(path).expanduser()
    if not out.is_absolute() and p.path:
        out = Path(p.path).resolve().parent / out
    return out.resolve()


def resolve_paths(p: Profile) -> None:
    """Make every file path of a validated profile absolute (data.path, the sources',
    ternary.curriculum_scores), so a run reads the same files from any folder."""
    if p.data.path:
        p.data.path = str(resolve_data_path(p))
    if p.data.val_path:
        p.data.val_path = str(_resolve(p, p.data.val_path))
    for entry in p.data.sources:
        if entry.get("path"):
            entry["path"] = str(_resolve(p, entry["path"]))
    if p.ternary.curriculum_scores:
        p.ternary.curriculum_scores = str(_resolve(p, p.ternary.curriculum_scores))


def _common_problems(p: Profile) -> list[Problem]:
    out = []
    # ternary training has no learning-rate schedule, so its warmup key is not read
    if p.kind != "ternary" and p.train.warmup_steps > p.train.steps:
        out.append(Problem("train.warmup_steps", f"got {p.train.warmup_steps}; must be <= train.steps "
                                                 f"({p.train.steps})"))
    if p.data.source == "trits" and p.kind != "ternary":
        out.append(Problem("data.source", f"got 'trits'; only ternary runs read trit files "
                                          f"(kind = {p.kind!r})"))
    if p.data.source in ("text", "tokens", "trits"):
        if not p.data.path:
            out.append(Problem("data.path", f"missing; data.source = {p.data.source!r} needs a file"))
        elif p.data.source == "tokens":
            out += _token_data_problems(p)
        else:
            path = resolve_data_path(p)
            if not path.is_file():
                out.append(Problem("data.path", f"got {p.data.path!r}; no such file ({path})"))
    if p.data.val_path:
        out += _val_path_problems(p)
    return out


def _token_data_problems(p: Profile) -> list[Problem]:
    """data.path of a tokens source: a prepared folder whose vocabulary is the model's, or
    a token array file."""
    path = resolve_data_path(p)
    if not path.exists():
        return [Problem("data.path", f"got {p.data.path!r}; no such file or folder ({path}); "
                                     f"prepare it with `moedesk data prepare TEXT... --out "
                                     f"{p.data.path}` (or --builtin pydoc)")]
    try:
        files = dataset_files(path)
    except ManifestError as exc:
        return [Problem("data.path", f"got {p.data.path!r}; {exc}")]
    if files.vocab_size is not None and p.kind != "ternary" \
            and files.vocab_size != p.model.vocab_size:
        return [Problem("model.vocab_size", f"got {p.model.vocab_size}; the prepared data in "
                                            f"{path if path.is_dir() else path.parent} has a "
                                            f"vocabulary of {files.vocab_size} (manifest.json): "
                                            f"set model.vocab_size = {files.vocab_size}")]
    return []


def _val_path_problems(p: Profile) -> list[Problem]:
    path = _resolve(p, p.data.val_path)
    if not path.exists():
        return [Problem("data.val_path", f"got {p.data.val_path!r}; no such file or folder "
                                         f"({path})")]
    if p.kind == "ternary" or p.data.source == "trits":
        if not path.is_file():
            return [Problem("data.val_path", f"got {p.data.val_path!r}; ternary runs read a "
                                             "text or trit file, not a folder")]
        if p.data.sources:
            return [Problem("data.val_path", "a [[data.sources]] mix holds out the tail of each "
                                             "source; val_path needs a single data.source")]
        return []
    try:
        files = dataset_files(path, text_ok=True)
    except ManifestError as exc:
        return [Problem("data.val_path", f"got {p.data.val_path!r}; {exc}")]
    if files.vocab_size is not None and files.vocab_size != p.model.vocab_size:
        return [Problem("data.val_path", f"got {p.data.val_path!r}; its vocabulary has "
                                         f"{files.vocab_size} tokens, model.vocab_size is "
                                         f"{p.model.vocab_size}")]
    if files.kind == "text" and p.data.source == "tokens" and not _has_tokenizer(p):
        return [Problem("data.val_path", f"got {p.data.val_path!r}, a text file; data.path "
                                         "is a bare token array with no tokenizer to encode "
                                         "it (give a token file, or prepare the data with "
                                         "`moedesk data prepare`)")]
    return []


def _has_tokenizer(p: Profile) -> bool:
    try:
        return dataset_files(resolve_data_path(p)).tokenizer is not None
    except ManifestError:
        return False


def _sample_problems(p: Profile) -> list[Problem]:
    """The trainer's sample prompts must be text the model can take (LM kinds)."""
    out = []
    prompts = p.train.sample_prompts
    byte_level = p.data.source != "tokens"
    for i, prompt in enumerate(prompts):
        data = prompt.encode("utf-8")
        if not data:
            out.append(Problem(f"train.sample_prompts[{i}]", "is empty; give at least one "
                                                              "character"))
        elif byte_level and max(data) >= p.model.vocab_size:
            out.append(Problem(f"train.sample_prompts[{i}]",
                               f"got {prompt!r}; its bytes must be below model.vocab_size "
                               f"({p.model.vocab_size})"))
        elif byte_level and len(data) > p.model.max_seq_len:
            out.append(Problem(f"train.sample_prompts[{i}]",
                               f"is {len(data)} tokens; must fit model.max_seq_len "
                               f"({p.model.max_seq_len})"))
    if prompts and p.data.source == "tokens" and not _has_tokenizer(p):
        out.append(Problem("train.sample_prompts", "data.path is a token array with no "
                                                   "tokenizer, so text prompts cannot be "
                                                   "encoded; leave it empty (or prepare the "
                                                   "data with `moedesk data prepare`)"))
    return out


def _keep_best_problems(p: Profile) -> list[Problem]:
    keep_best = p.checkpoint.keep_best
    if not keep_best or p.kind in KEEP_BEST[keep_best][2]:
        return []
    allowed = ", ".join(repr(k) for k, (_, _, kinds) in KEEP_BEST.items() if p.kind in kinds)
    return [Problem("checkpoint.keep_best", f"got {keep_best!r}; {p.kind} runs allow "
                                            f"{allowed} (or \"\" for off)")]


def resolve_data_path(p: Profile) -> Path:
    """data.path as an absolute path: relative paths are taken from the profile's folder."""
    path = Path(p.data.path).expanduser()
    if not path.is_absolute() and p.path:
        path = Path(p.path).resolve().parent / path
    return path.resolve()


def cross_field_problems(p: Profile) -> list[Problem]:
    out = _common_problems(p) + _source_problems(p) + _keep_best_problems(p) + dist_problems(p)
    if p.kind in ("dense", "topk"):
        out += _model_problems(p) + _sample_problems(p)
    if p.kind == "topk":
        out += _moe_problems(p)
    if p.kind == "ternary":
        out += _ternary_problems(p)
    return out


def health_problems(overrides: dict) -> list[Problem]:
    """Problems in a profile's `[health.RULE]` tables (unknown rule, key or type)."""
    out = []
    for rule, table in overrides.items():
        if rule not in RULES:
            out.append(Problem(f"health.{rule}", "unknown key; allowed keys: stop_on, "
                                                 + ", ".join(RULES)))
            continue
        if not isinstance(table, dict):
            out.append(Problem(f"health.{rule}", f"got {table!r}; must be a table of thresholds"))
            continue
        params = RULES[rule].params
        for key, value in table.items():
            where = f"health.{rule}.{key}"
            if key not in params:
                out.append(Problem(where, "unknown key; allowed keys: " + ", ".join(params)))
                continue
            default = params[key]
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    out.append(Problem(where, f"got {value!r}; must be true or false"))
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                out.append(Problem(where, f"got {value!r}; must be a number"))
            elif value != value or value in (float("inf"), float("-inf")):
                out.append(Problem(where, f"got {value!r}; must be a finite number"))
            elif value < 0:
                out.append(Problem(where, f"got {value!r}; must be >= 0"))
            elif isinstance(default, int) and not float(value).is_integer():
                out.append(Problem(where, f"got {value!r}; must be an integer"))
            elif isinstance(default, int) and key in ("patience", "window", "min_history") \
                    and value < 1:
                out.append(Problem(where, f"got {value!r}; must be >= 1"))
    return out
