"""Metric names: the one catalogue of what the trainers emit and what every reader reads.

A metric is FAMILY/KEY, or FAMILY/L{i}/KEY for MoE layer i (the block index), with a
float value (non-finite values travel as strings, runner/protocol.py):
  train/  loss, lr, grad_norm, tokens_per_s         each logged step (dense, topk)
          epoch, samples_per_s                      each logged step (ternary)
  val/    loss, ppl                                 each evaluation (dense, topk)
  sys/    step_s, rss_mb                            each logged step (every kind)
  data/   batch_hash                                each logged step (dense, topk)
  moe/    the load statistics of stats/load.py (imbalance, cv, max_vio, entropy_norm,
          usage_std, min_share, max_share, max_token_fraction, zero_experts) and
          dead_experts (topk, ternary); aux_loss, z_loss, max_abs_bias, dropped_frac
          (topk); each also per layer as moe/L{i}/KEY. The overall moe/KEY is the mean of
          the layers (zero_experts, dead_experts: their sum; stats.load.aggregate)
          curriculum_phase                          each logged step (ternary curriculum)
  route/  latency_us (topk: also route/L{i}/latency_us; ternary: one single-sample
          routing call), us_per_sample, active_experts, ref_imbalance (ternary)
  ff/     goodness_pos, goodness_neg, goodness_delta, weights_changed, pairs_updated (each
          logged step); accuracy, tie_rate, eval_goodness_pos, eval_goodness_neg,
          test_goodness, seed000_score, source/{name}/accuracy (each evaluation);
          baseline/{scorer} (step 0: the non-learned scorers on the same held-out pairs)
The per-expert counts are not metrics: they travel as `expert_load` events.
Pure stdlib: the trainers, the health rules, the TUI and the CLI all import it. Adding a
metric means one constant here plus the code that computes or reads it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

TRAIN, VAL, SYS, DATA, MOE, ROUTE, FF = "train", "val", "sys", "data", "moe", "route", "ff"
FAMILIES = (TRAIN, VAL, SYS, DATA, MOE, ROUTE, FF)
LAYER_FAMILIES = (MOE, ROUTE)  # the families with per-layer names


def metric(family: str, key: str) -> str:
    """The overall name FAMILY/KEY."""
    return f"{family}/{key}"


def layer_metric(family: str, layer: int, key: str) -> str:
    """The per-layer name FAMILY/L{layer}/KEY."""
    return f"{family}/L{int(layer)}/{key}"


def per_layer(overall: str, layer: int) -> str:
    """The per-layer form of an overall name: per_layer("moe/cv", 1) = "moe/L1/cv"."""
    family, key = split(overall)
    return layer_metric(family, layer, key)


def prefix(family: str) -> str:
    """FAMILY/: matches every name of the family, per-layer ones included."""
    return f"{family}/"


class LayerName(NamedTuple):
    family: str
    layer: int
    key: str

    @property
    def overall(self) -> str:
        """The overall name this per-layer name belongs to (moe/L1/cv -> moe/cv)."""
        return metric(self.family, self.key)


def parse_layer(name: str) -> LayerName | None:
    """FAMILY/L{i}/KEY -> (family, i, key); None for any other name."""
    parts = name.split("/")
    if len(parts) != 3 or not parts[1].startswith("L") or not parts[1][1:].isdigit():
        return None
    return LayerName(parts[0], int(parts[1][1:]), parts[2])


@lru_cache(maxsize=16384)
def overall_of(name: str) -> str | None:
    """The overall name of a per-layer name (moe/L1/cv -> moe/cv); None for other names.
    Cached: the health rules ask for every name of every logged step, and names repeat."""
    parsed = parse_layer(name)
    return None if parsed is None else parsed.overall


def split(name: str) -> tuple[str, str]:
    """An overall name FAMILY/KEY -> (family, key)."""
    family, sep, key = name.partition("/")
    if not sep or not key or "/" in key:
        raise ValueError(f"{name!r} is not an overall metric name FAMILY/KEY")
    return family, key


# ---- train/, val/, sys/, data/ --------------------------------------------------------------
TRAIN_LOSS = metric(TRAIN, "loss")
TRAIN_LR = metric(TRAIN, "lr")
TRAIN_GRAD_NORM = metric(TRAIN, "grad_norm")
TRAIN_TOKENS_PER_S = metric(TRAIN, "tokens_per_s")
TRAIN_EPOCH = metric(TRAIN, "epoch")
TRAIN_SAMPLES_PER_S = metric(TRAIN, "samples_per_s")
TRAIN_CURRICULUM_PHASE = metric(TRAIN, "curriculum_phase")
VAL_LOSS = metric(VAL, "loss")
VAL_PPL = metric(VAL, "ppl")
SYS_STEP_S = metric(SYS, "step_s")
SYS_RSS_MB = metric(SYS, "rss_mb")
DATA_BATCH_HASH = metric(DATA, "batch_hash")

# ---- moe/: load statistics (keys of stats.load.SCALAR_KEYS), then the trainers' own -----
MOE_IMBALANCE = metric(MOE, "imbalance")
MOE_CV = metric(MOE, "cv")
MOE_MAX_VIO = metric(MOE, "max_vio")
MOE_ENTROPY_NORM = metric(MOE, "entropy_norm")
MOE_USAGE_STD = metric(MOE, "usage_std")
MOE_MIN_SHARE = metric(MOE, "min_share")
MOE_MAX_SHARE = metric(MOE, "max_share")
MOE_MAX_TOKEN_FRACTION = metric(MOE, "max_token_fraction")
MOE_ZERO_EXPERTS = metric(MOE, "zero_experts")
MOE_DEAD_EXPERTS = metric(MOE, "dead_experts")
MOE_AUX_LOSS = metric(MOE, "aux_loss")
MOE_Z_LOSS = metric(MOE, "z_loss")
MOE_MAX_ABS_BIAS = metric(MOE, "max_abs_bias")
MOE_DROPPED_FRAC = metric(MOE, "dropped_frac")

# ---- route/ -------------------------------------------------------------------------------
ROUTE_LATENCY_US = metric(ROUTE, "latency_us")
ROUTE_REF_IMBALANCE = metric(ROUTE, "ref_imbalance")
ROUTE_US_PER_SAMPLE = metric(ROUTE, "us_per_sample")
ROUTE_ACTIVE_EXPERTS = metric(ROUTE, "active_experts")

# ---- ff/ (ternary) ------------------------------------------------------------------------
FF_GOODNESS_POS = metric(FF, "goodness_pos")
FF_GOODNESS_NEG = metric(FF, "goodness_neg")
FF_GOODNESS_DELTA = metric(FF, "goodness_delta")
FF_WEIGHTS_CHANGED = metric(FF, "weights_changed")
FF_ACCURACY = metric(FF, "accuracy")
FF_TIE_RATE = metric(FF, "tie_rate")
FF_EVAL_GOODNESS_POS = metric(FF, "eval_goodness_pos")
FF_EVAL_GOODNESS_NEG = metric(FF, "eval_goodness_neg")
FF_TEST_GOODNESS = metric(FF, "test_goodness")
FF_PAIRS_UPDATED = metric(FF, "pairs_updated")
FF_SEED000_SCORE = metric(FF, "seed000_score")
FF_BASELINE_SCORERS = ("template", "frequency", "bigram")


def ff_source_accuracy(source: str) -> str:
    """Held-out accuracy of one data source of a multi-source ternary run."""
    return f"{FF}/source/{source}/accuracy"


def ff_baseline(scorer: str) -> str:
    """Held-out accuracy of a non-learned scorer (stats of the training windows only)."""
    return f"{FF}/baseline/{scorer}"


# every overall name above, in catalogue order
ALL = tuple(v for k, v in list(globals().items()) if k.isupper() and isinstance(v, str)
            and "/" in v)
