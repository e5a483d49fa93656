"""Non-learned scorers of (positive, negative) pairs: what `ff/accuracy` must be read against.

Each scorer is fitted on the training positives alone (counts, no negatives, no
training) and gives every sample a score; its accuracy on the held-out pairs uses the
trainer's rule (the positive must score higher; ties count half):
- template: x . (mean training sample), the mean-trit template;
- frequency: sum_i log p_i(x_i), per-position trit frequencies;
- bigram: log p_0(x_0) + sum_i log p_i(x_i | x_{i-1}), position-specific trit transitions
  (a trit bigram, which also sees the order of the trits inside a byte);
- symbol_bigram: sum_u log p(s_u | s_{u-1}) over whole symbols (bytes of the balanced
  encoding). It knows the encoding's byte boundaries, which the model is not told; a
  reference, not one of the baselines the issue names.
Counts are +1 smoothed. A generator whose negatives keep every position's statistics
(hybrid, shuffle, shuffle_words) puts template and frequency near 0.5 by construction.

Shape letters: B samples, W trits per sample, V the 3 trit values (the trits' vocabulary),
X trits per symbol, T whole symbols per sample (a window's byte positions).
"""

from __future__ import annotations

import torch
from torch import Tensor

BASELINES = ("template", "frequency", "bigram", "symbol_bigram")


def pair_accuracy(score_pos_B: Tensor, score_neg_B: Tensor) -> float:
    """Share of pairs whose positive scores higher, ties counting half (as the trainer)."""
    wins = (score_pos_B > score_neg_B).double() + 0.5 * (score_pos_B == score_neg_B).double()
    return float(wins.mean())


CHUNK = 16384  # samples per pass: the counts of a large corpus never need it whole in int64


class Baselines:
    """The scorers above, fitted once on the training samples (int8 [B, W])."""

    def __init__(self, train_BW: Tensor, trits_per_symbol: int):
        count, width = train_BW.shape
        self.per = trits_per_symbol
        values = 3 ** self.per
        sum_W = torch.zeros(width, dtype=torch.float64)
        freq_VW = torch.ones(3, width, dtype=torch.float64)  # +1 smoothing
        # transitions into position i (1..W-1) from its predecessor: W - 1 rows of 3 x 3
        trans_W9 = torch.ones(width - 1, 9, dtype=torch.float64)
        sym_pairs = torch.ones(values * values, dtype=torch.float64)
        for start in range(0, count, CHUNK):
            train = train_BW[start:start + CHUNK].long() + 1  # trit values as 0, 1, 2
            sum_W += (train - 1).sum(0).double()
            for v in range(3):
                freq_VW[v] += (train == v).sum(0).double()
            pair_BW = train[:, :-1] * 3 + train[:, 1:]
            trans_W9.scatter_add_(1, pair_BW.t().contiguous(),
                                  torch.ones(pair_BW.shape[::-1], dtype=torch.float64))
            symbols_BT = self._symbols(train)
            if symbols_BT.shape[1] > 1:
                flat = (symbols_BT[:, :-1] * values + symbols_BT[:, 1:]).reshape(-1)
                sym_pairs.index_add_(0, flat, torch.ones(flat.numel(), dtype=torch.float64))
        self.template_W = sum_W / count
        self.log_p_VW = (freq_VW / freq_VW.sum(0)).log()
        trans_W33 = trans_W9.view(width - 1, 3, 3)
        self.log_trans_W9 = (trans_W33 / trans_W33.sum(2, keepdim=True)).log().view(width - 1, 9)
        sym_pairs = sym_pairs.view(values, values)
        self.log_sym_trans = (sym_pairs / sym_pairs.sum(1, keepdim=True)).log()

    def _symbols(self, x_BW: Tensor) -> Tensor:
        """Whole symbols as integers 0 .. 3^X - 1 (from trit values 0, 1, 2): [B, T]."""
        whole = x_BW.shape[1] // self.per
        digits_BTX = x_BW[:, :whole * self.per].reshape(x_BW.shape[0], whole, self.per)
        powers_X = torch.tensor([3 ** i for i in range(self.per)])
        return (digits_BTX * powers_X).sum(-1)

    def scores(self, x_BW: Tensor) -> dict[str, Tensor]:
        """Every scorer's score per sample, float64 [B] each."""
        parts = [self._scores(x_BW[start:start + CHUNK]) for start in range(0, len(x_BW), CHUNK)]
        return {name: torch.cat([part[name] for part in parts]) for name in BASELINES}

    def _scores(self, x_BW: Tensor) -> dict[str, Tensor]:
        x = x_BW.long() + 1
        log_p_BW = self.log_p_VW.gather(0, x)
        log_steps_BW = self.log_trans_W9.t().gather(0, x[:, :-1] * 3 + x[:, 1:])
        symbols_BT = self._symbols(x)
        return {
            "template": (x - 1).double() @ self.template_W,
            "frequency": log_p_BW.sum(1),
            "bigram": log_p_BW[:, 0] + log_steps_BW.sum(1),
            "symbol_bigram": self.log_sym_trans[symbols_BT[:, :-1], symbols_BT[:, 1:]].sum(1),
        }

    def accuracies(self, pos_BW: Tensor, neg_BW: Tensor) -> dict[str, float]:
        pos, neg = self.scores(pos_BW), self.scores(neg_BW)
        return {name: pair_accuracy(pos[name], neg[name]) for name in BASELINES}
