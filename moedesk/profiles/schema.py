"""The run-profile schema: one frozen dataclass per TOML section.

Every field carries its help text, allowed range or choices in its metadata;
`validate.py` walks these declarations generically, `docs/profiles.md` is
generated from the same place, so the three can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from moedesk.stats import names

KINDS = ("dense", "topk", "ternary")
LM_KINDS = ("dense", "topk")  # keys only the language-model kinds read
CPU_MATMULS = ("auto", "blas", "onednn")  # [train] cpu_matmul (train/matmul.py)

# [checkpoint] keep_best: value -> (the metric it reads, "min" | "max", the kinds it fits)
KEEP_BEST = {
    "val/loss": (names.VAL_LOSS, "min", LM_KINDS),
    "ff/accuracy": (names.FF_ACCURACY, "max", ("ternary",)),
    # seed 000: goodness delta x (1 - load-balance score), ternary/loop.py
    "seed000_score": (names.FF_SEED000_SCORE, "max", ("ternary",)),
}


def knob(default: Any, help: str, *, min: float | None = None, max: float | None = None,
         choices: tuple | None = None, min_exclusive: bool = False, kinds: tuple = (),
         items: type = int) -> Any:
    """A profile field with its documentation and bounds (`items`: a list's element type)."""
    meta = {"help": help, "min": min, "max": max, "choices": choices,
            "min_exclusive": min_exclusive, "kinds": kinds, "items": items}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelSection:
    vocab_size: int = knob(256, "Vocabulary size. Byte-level data uses 256.", min=2, max=1_000_000)
    dim: int = knob(128, "Model (residual stream) width.", min=8, max=16384)
    n_layers: int = knob(4, "Number of transformer blocks.", min=1, max=256)
    n_heads: int = knob(4, "Attention (query) heads; must divide dim.", min=1, max=256)
    n_kv_heads: int = knob(2, "Key/value heads for grouped-query attention; must divide n_heads.",
                           min=1, max=256)
    ffn_hidden: int = knob(0, "Hidden width of the dense SwiGLU FFN; 0 = 8/3*dim rounded up to "
                              "a multiple of 32.", min=0, max=262144)
    max_seq_len: int = knob(256, "Longest sequence the RoPE tables cover; must be >= data.seq_len.",
                            min=8, max=131072)
    rope_theta: float = knob(10000.0, "RoPE base frequency.", min=1.0, max=1e9)
    norm_eps: float = knob(1e-5, "RMSNorm epsilon.", min=0.0, max=0.1, min_exclusive=True)
    dropout: float = knob(0.0, "Dropout on attention and FFN outputs.", min=0.0, max=0.9)
    init_std: float = knob(0.02, "Std of the normal weight init.", min=0.0, max=1.0,
                           min_exclusive=True)
    tie_embeddings: bool = knob(True, "Share the token embedding with the output head.")


@dataclass
class MoESection:
    num_experts: int = knob(8, "Experts per MoE layer.", min=1, max=1024)
    top_k: int = knob(2, "Experts chosen per token; must be <= num_experts.", min=1, max=64)
    expert_hidden: int = knob(0, "Hidden width of each SwiGLU expert; 0 = model.ffn_hidden / top_k "
                                 "(equal active parameters to the dense FFN).", min=0, max=262144)
    moe_layers: list = knob([], "Block indices whose FFN is MoE; empty = every block from "
                                "skip_first_n_moe on.")
    skip_first_n_moe: int = knob(0, "Keep the first N blocks dense (ignored when moe_layers is set).",
                                 min=0, max=256)
    capacity_factor: float = knob(0.0, "0 = dropless; else each expert takes at most "
                                       "ceil(cf*T*K/E) tokens and the rest are dropped.",
                                  min=0.0, max=64.0)
    aux_loss_weight: float = knob(0.01, "alpha of the Switch load-balancing loss; 0 = off.",
                                  min=0.0, max=10.0)
    z_loss_weight: float = knob(0.001, "beta of the router z-loss; 0 = off.", min=0.0, max=10.0)
    bias_balancing: bool = knob(True, "Auxiliary-loss-free balancing with a per-layer routing bias.")
    bias_update_speed: float = knob(0.001, "u: bias step per optimizer step.", min=0.0, max=1.0)
    router_init_std: float = knob(0.01, "Std of the router weight init (small keeps early "
                                        "routing near uniform).", min=0.0, max=1.0)
    router_noise_std: float = knob(0.0, "Std of Gaussian noise on router logits in training "
                                         "(opt-in; 0 = off).", min=0.0, max=10.0)
    expert_dropout: float = knob(0.0, "Probability of dropping a chosen expert for a token in "
                                      "training (opt-in; 0 = off).", min=0.0, max=0.9)
    dispatch: str = knob("sorted", "Expert dispatch: sort tokens once by expert (fast), or a "
                                   "per-expert mask loop (reference).",
                         choices=("sorted", "eager"))
    dead_window: int = knob(20, "Logged steps an expert must get zero tokens to count as dead.",
                            min=1, max=100000)
    expert_parallel: int = knob(1, "Ranks each MoE layer's experts are sharded over (expert "
                                   "parallelism, tokens travel by all-to-all); must divide "
                                   "num_experts and the world size (train.nproc_per_node x "
                                   "train.nnodes); 1 = every rank holds every expert.",
                                min=1, max=1024)
    upcycle_noise: float = knob(0.0, "`moedesk run --init-from` a dense run: Gaussian noise added "
                                     "to each expert's copy of the dense FFN, in units of each "
                                     "tensor's own std (breaks the experts' symmetry); 0 = exact "
                                     "copies (the upcycled model then equals the dense one).",
                                min=0.0, max=1.0)


@dataclass
class TernarySection:
    num_experts: int = knob(243, "Experts (3^5 by default).", min=2, max=6561)
    active_experts: int = knob(16, "Experts each sample is routed to (K).", min=1, max=32)
    specialization_dim: int = knob(128, "Trits in each expert's specialization vector; samples "
                                        "are scored on their first specialization_dim trits.",
                                   min=4, max=4096)
    topology: str = knob("hierarchical", "flat = top-K over all experts; hierarchical = top "
                                         "clusters, then top-K inside them.",
                         choices=("flat", "hierarchical"))
    cluster_size: int = knob(16, "Experts per cluster (hierarchical only).", min=2, max=1024)
    active_clusters: int = knob(4, "Clusters chosen per sample (hierarchical only).", min=1,
                                max=1024)
    input_dim: int = knob(64, "Trits per sample fed to the experts.", min=4, max=4096)
    hidden_dim: int = knob(128, "Width of the hidden ternary layers.", min=4, max=4096)
    expert_layers: int = knob(3, "Ternary linear layers per expert (3 = the reference's "
                                 "input->hidden->hidden->output).", min=1, max=8)
    output_dim: int = knob(64, "Output trits per expert (goodness counts their non-zeros).",
                           min=4, max=4096)
    activation_threshold: float = knob(1.0, "Initial dead zone of the ternary sign, in units of "
                                            "a random trit dot product's spread "
                                            "(sqrt(4/9 * fan_in)); 0 = the reference's plain "
                                            "sign.", min=0.0, max=100.0)
    target_activity: float = knob(0.5, "Share of units a positive should activate; each "
                                       "unit's dead zone moves one step per batch towards it. "
                                       "0 = fixed dead zones (the reference).", min=0.0,
                                  max=1.0)
    goodness: str = knob("last", "last = the non-zero output trits of the last layer (the "
                                 "reference); layers = summed over every layer's outputs "
                                 "(layer-local goodness).", choices=("last", "layers"))
    specialization_learning: float = knob(0.0, "Share of each routed expert's specialization "
                                               "trits that may step per batch towards the "
                                               "sign of its samples' centred sum (competitive "
                                               "Hebbian routing); 0 = fixed random "
                                               "specializations (the reference).",
                                          min=0.0, max=1.0)
    hebbian_rule: str = knob("contrastive", "contrastive = reinforce the positive's and weaken "
                                            "the negative's active patterns (learns); reference "
                                            "= the documented sign-only rule on the positive.",
                             choices=("contrastive", "reference"))
    update_fraction: float = knob(0.05, "Share of each expert's weights a contrastive step "
                                        "considers, drawn at random (a learning rate for "
                                        "trits; contrastive only).",
                                  min=0.0, max=1.0, min_exclusive=True)
    margin: int = knob(0, "Contrastive only: pairs whose goodness delta is already above "
                          "margin do not drive the update.", min=-4096, max=4096)
    corruption: float = knob(0.1, "Share of the expert input positions changed to make a "
                                  "negative sample (negatives = corrupt).", min=0.0, max=1.0,
                             min_exclusive=True)
    negatives: str = knob("corrupt", "Negative samples: corrupt = the seeds' random trit "
                                     "changes (per-position statistics give them away); "
                                     "hybrid = a real window spliced onto another at a symbol "
                                     "boundary; shuffle = the window's bytes in a random order; "
                                     "shuffle_words = its interior words in a new order "
                                     "(balanced text only). See docs/ternary.md.",
                          choices=("corrupt", "hybrid", "shuffle", "shuffle_words"))
    encoding: str = knob("balanced", "Bytes to trits: balanced = lossless 6-trit balanced ternary "
                                     "per byte; letters = the seeds' A-M/N-Z mapping.",
                         choices=("balanced", "letters"))
    load_balance_alpha: float = knob(0.1, "Load penalty on routing scores, in score spreads "
                                           "per unit of excess load; 0 = off.",
                                     min=0.0, max=10.0)
    rebalance_interval: int = knob(100, "Batches between decays (halving) of the utilization "
                                        "counters.", min=1, max=1_000_000)
    dead_window: int = knob(20, "Logged steps an expert must get no samples to count as dead.",
                            min=1, max=100000)
    early_stopping_patience: int = knob(10, "Epochs without a better held-out accuracy before "
                                            "stopping; 0 = never.", min=0, max=100000)
    max_epochs: int = knob(0, "End the run (completed) after this many epochs, before "
                              "train.steps if that comes first; 0 = no limit.", min=0,
                           max=100_000_000)
    augment_noise: float = knob(0.0, "Seed 000's AddNoise noise_prob: each trit of a training "
                                     "positive is replaced by a uniform random trit with this "
                                     "probability (a third of those keep their value); "
                                     "evaluation is not noised. 0 = off.", min=0.0, max=1.0)
    expert_dropout: float = knob(0.0, "Share of routed (sample, expert) pairs that skip their "
                                      "update in a training step (seed 000: 0.1); they still "
                                      "count as routed. 0 = off.", min=0.0, max=0.9)
    negative_samples_per_positive: int = knob(1, "Negatives drawn for each positive per step; "
                                                 "each makes its own pair with every routed "
                                                 "expert.", min=1, max=16)
    curriculum_phases: int = knob(1, "Split the steps into this many equal phases; phase p "
                                     "trains on the easiest (p + 1) / phases of each source "
                                     "(seed 000's curriculum). 1 = off.", min=1, max=100)
    curriculum_by: str = knob("length", "What makes a sample easy: length = shorter trit-file "
                                        "samples first; typicality = the most typical windows "
                                        "first (per-position trit frequencies); scores = "
                                        "lowest curriculum_scores first.",
                              choices=("length", "typicality", "scores"))
    curriculum_scores: str = knob("", "File of one number per sample (per window for text), in "
                                      "file order, for curriculum_by = scores; relative to the "
                                      "profile's folder.")
    active_experts_schedule: list = knob([], "Progressive experts (seed 000): the active_experts "
                                             "values taken at the steps in active_experts_at, "
                                             "e.g. [16, 32]; the load counters carry over. "
                                             "Empty = active_experts throughout.")
    active_experts_at: list = knob([], "The step at which each active_experts_schedule entry "
                                       "takes effect (increasing, > 0); active_experts applies "
                                       "before the first.")
    checkpoint_every_epochs: int = knob(5, "Also checkpoint every N epochs; 0 = only on "
                                           "checkpoint.every steps.", min=0, max=100000)


@dataclass
class TrainSection:
    steps: int = knob(1000, "Optimizer steps (ternary: batches).", min=1, max=100_000_000)
    batch_size: int = knob(16, "Sequences (ternary: samples) per micro-batch.", min=1, max=65536)
    grad_accum: int = knob(1, "Micro-batches per optimizer step.", min=1, max=4096, kinds=LM_KINDS)
    lr: float = knob(3e-4, "Peak learning rate.", min=0.0, max=100.0, min_exclusive=True, kinds=LM_KINDS)
    min_lr_ratio: float = knob(0.1, "Cosine floor as a share of lr.", min=0.0, max=1.0, kinds=LM_KINDS)
    warmup_steps: int = knob(100, "Linear warmup steps; must be <= steps.", min=0, max=100_000_000,
                             kinds=LM_KINDS)
    weight_decay: float = knob(0.1, "AdamW weight decay (not on norms, biases or embeddings).",
                               min=0.0, max=10.0, kinds=LM_KINDS)
    beta1: float = knob(0.9, "AdamW beta1.", min=0.0, max=1.0, kinds=LM_KINDS)
    beta2: float = knob(0.95, "AdamW beta2.", min=0.0, max=1.0, kinds=LM_KINDS)
    grad_clip: float = knob(1.0, "Clip the global gradient norm; 0 = off.", min=0.0, max=1e6, kinds=LM_KINDS)
    bf16: bool = knob(False, "bf16 autocast for matmuls (router, losses and CPU attention "
                             "stay fp32).", kinds=LM_KINDS)
    device: str = knob("auto", "auto = CUDA when present, else CPU.", choices=("auto", "cpu", "cuda"))
    threads: int = knob(0, "torch CPU threads; 0 = the cores divided by the moedesk runs alive "
                           "when the run starts (at least 1; torch's default outside a "
                           "supervisor).", min=0, max=1024)
    cpu_matmul: str = knob("auto", "The fp32 matmul kernel on a CPU: blas = torch's "
                                   "(MKL on x86), onednn = oneDNN's, auto = oneDNN on AMD "
                                   "CPUs with AVX-512 (where MKL runs its AVX2 code and "
                                   "oneDNN is ~2x faster), blas elsewhere.",
                           choices=CPU_MATMULS, kinds=LM_KINDS)
    compile: bool = knob(False, "Run each block under torch.compile (the first step compiles "
                                "and is timed apart).", kinds=LM_KINDS)
    activation_checkpointing: bool = knob(False, "Recompute each block's activations in "
                                                 "backward: less memory, more compute.",
                                          kinds=LM_KINDS)
    log_every: int = knob(1, "Steps between logged metrics.", min=1, max=1_000_000)
    eval_every: int = knob(50, "Steps between evaluations; 0 = only at the end.", min=0,
                           max=100_000_000)
    eval_batches: int = knob(4, "Batches per evaluation.", min=1, max=100000)
    sample_every: int = knob(200, "Steps between sampled continuations of train.sample_prompts "
                                  "(`sample` events, the samples table); 0 = off.", min=0,
                             max=100_000_000, kinds=LM_KINDS)
    sample_prompts: list = knob([], "Prompts continued every sample_every steps; empty = the "
                                    "first words of a line of the validation text.",
                                kinds=LM_KINDS, items=str)
    sample_tokens: int = knob(48, "Tokens generated per sample prompt.", min=1, max=4096,
                              kinds=LM_KINDS)
    sample_temperature: float = knob(0.8, "Temperature of those samples; 0 = greedy.", min=0.0,
                                     max=100.0, kinds=LM_KINDS)
    nproc_per_node: int = knob(1, "Training processes (ranks) on each node; > 1 runs under "
                                  "torchrun (torch.distributed.run), data parallel. batch_size "
                                  "is per rank: the global batch is nproc_per_node x nnodes x "
                                  "batch_size x grad_accum.", min=1, max=1024)
    nnodes: int = knob(1, "Nodes (machines) the run spans; > 1 needs train.rdzv_endpoint and one "
                          "`moedesk run --node-rank R` per node (docs/distributed.md).",
                       min=1, max=4096)
    rdzv_endpoint: str = knob("", "HOST:PORT every node meets at when nnodes > 1 (node 0's "
                                  "address and a free port); `moedesk run --rdzv-endpoint` "
                                  "sets it. Unused on one node.")
    dist_timeout: float = knob(120.0, "Seconds a collective or the rendezvous waits for the "
                                      "other ranks before the run fails (so a dead node cannot "
                                      "hang the rest), and the grace a stop gives the ranks to "
                                      "finish their step and checkpoint.", min=5.0, max=86400.0)


@dataclass
class DataSection:
    source: str = knob("grammar", "grammar = built-in labelled synthetic corpus; text = a text "
                                  "file; tokens = a prepared token folder or a .npy/.bin token "
                                  "array (docs/data.md); trits = the seeds' "
                                  "binary trit-sample file (ternary only).",
                       choices=("grammar", "text", "tokens", "trits"))
    path: str = knob("", "File for source text/trits, or for tokens a prepared folder "
                         "(`moedesk data prepare`) or a .npy/.bin token array; relative to the "
                         "profile's folder.")
    val_path: str = knob("", "Held-out data replacing the tail split: a text file (encoded like "
                             "the training data), a token file (.npy/.bin), a prepared folder "
                             "(its val.bin), or a trit file for a trits source; relative to the "
                             "profile's folder. \"\" = a prepared folder's val.bin, else the "
                             "last val_fraction.")
    seq_len: int = knob(64, "Tokens per training sequence.", min=2, max=131072)
    val_fraction: float = knob(0.1, "Share of the data held out for evaluation.", min=0.0, max=0.5,
                               min_exclusive=True)
    grammar_sentences: int = knob(20000, "Sentences generated for the grammar corpus.", min=100,
                                  max=10_000_000)
    grammar_seed: int = knob(0, "Seed of the grammar corpus (fixed so every run sees the same "
                                "text).", min=0, max=2**31 - 1)
    sources: list[dict] = knob([], "A weighted mix of sources ([[data.sources]] tables with "
                                   "name, source (grammar, text or trits), path, weight > 0, "
                                   "and grammar_seed / grammar_sentences for grammar); replaces "
                                   "data.source and data.path. Held-out accuracy is logged per "
                                   "source. See docs/ternary.md.", kinds=("ternary",))


@dataclass
class CheckpointSection:
    every: int = knob(100, "Steps between checkpoints; 0 = only at the end and on stop.", min=0,
                      max=100_000_000)
    keep: int = knob(3, "Checkpoints kept on disk (oldest pruned); 0 = keep all.", min=0,
                     max=100000)
    keep_best: str = knob("", "Also keep the best checkpoint, never pruned by keep (RUN@best): "
                              "val/loss (dense, topk; lowest), ff/accuracy or seed000_score "
                              "(ternary; highest); \"\" = off.", choices=("", *KEEP_BEST))


@dataclass
class HealthSection:
    stop_on: str = knob("critical", "Alert severity that stops the run.",
                        choices=("warning", "critical", "never"))
    rules: dict = knob(None, "Per-rule overrides: [health.RULE] with enabled and thresholds "
                             "(see docs/health.md).")

    def __post_init__(self) -> None:
        if self.rules is None:
            self.rules = {}


@dataclass
class Profile:
    name: str
    kind: str
    seed: int
    model: ModelSection
    moe: MoESection
    ternary: TernarySection
    train: TrainSection
    data: DataSection
    checkpoint: CheckpointSection
    health: HealthSection
    path: str = ""  # the file it came from ("" for built in code)


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "moe": MoESection,
    "ternary": TernarySection,
    "train": TrainSection,
    "data": DataSection,
    "checkpoint": CheckpointSection,
    "health": HealthSection,
}

TOP_LEVEL = {
    "name": (str, "Run name prefix; runs are named NAME-ID."),
    "kind": (str, "dense, topk or ternary."),
    "seed": (int, "Fixes data order, init and routing."),
}


def section_fields(section: str):
    """(name, type, default, metadata) for each field of a section."""
    cls = SECTIONS[section]
    out = []
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        out.append((f.name, f.type, default, f.metadata))
    return out
