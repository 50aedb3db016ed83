"""Per-request feature attributions: Shapley values of a model's output, estimated through the model itself.

Model-agnostic (any scorer of feature matrices: an ONNX version's
``predict``), interventional: a coalition ``S`` of features is
worth ``v(S)``, the mean over background rows ``b`` of ``g(f(x_S, b_rest))``,
the model's output with the features of ``S`` taken from the explained row
``x`` and the others from ``b``. ``g`` is the link the attributions are
read in: the log-odds for a classifier's probability (there a logistic
model's attributions are exactly ``w_i (x_i - E[b_i])``), the identity for
a regressor. The base value is ``v(∅)``, the mean output over the
background, and the attributions of a row sum to ``g(f(x)) - base``
(efficiency) by construction.

The estimate is KernelSHAP (Lundberg & Lee, 2017): ``v`` on a set of
coalitions, then a weighted least-squares fit under the efficiency
constraint. When the model has few enough features that every coalition
fits in the budget (``2^M - 2 <= samples``) all of them are evaluated and
the answer is the exact Shapley value; otherwise about ``samples``
coalitions: the heaviest sizes whole, the rest drawn from the Shapley
kernel in complementary pairs (see :func:`coalitions`). The coalitions
are drawn once per explainer (seeded), so a row's attributions do not
depend on the rows explained beside it.

Cost: ``samples × background`` model rows per explained row, evaluated in
a few large calls of at most ``max_rows`` rows (ONNX Runtime spends
~0.2-0.4 µs per row of a small MLP in a big batch, 13 µs on a call of one).
The coalition rows are built in the model's matrix, one ``np.where`` per
call, so nothing is encoded per row.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

#: scores of rows of a feature matrix, one per row
Scorer = Callable[[np.ndarray], np.ndarray]
Link = Literal["identity", "logit"]

KERNEL_SHAP = "kernel_shap"  # the coalitions were sampled: an estimate
EXACT = "exact_shapley"  # every coalition was evaluated: the Shapley values of the background game
PROBABILITY_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the log-odds: a saturated sigmoid


@dataclass(frozen=True, slots=True)
class Attributions:
    """The attributions of a batch of rows, in link space."""

    phi: np.ndarray  # (rows, features), in the explainer's feature order
    value: np.ndarray  # g(f(x)) per row: base + phi.sum(axis=1)
    base: float  # v(∅): the mean of g(f(b)) over the background
    method: str  # KERNEL_SHAP or EXACT
    samples: int  # coalitions evaluated per row
    calls: int  # model calls this batch took


def link(scores: np.ndarray, how: Link) -> np.ndarray:
    """Scores in link space: the log-odds of a probability (clipped), or as they are.

    >>> link(np.array([0.5, 0.880797]), "logit").round(3).tolist()
    [0.0, 2.0]
    """
    s = np.asarray(scores, dtype=np.float64)
    if how == "identity":
        return s
    p = np.clip(s, PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
    return np.log(p) - np.log1p(-p)


def kernel_weight(m: int, size: np.ndarray) -> np.ndarray:
    """The Shapley kernel: how much a coalition of ``size`` of ``m`` features counts in the fit."""
    size = np.asarray(size, dtype=np.int64)
    comb = np.array([math.comb(m, int(s)) for s in size], dtype=np.float64)
    return (m - 1) / (comb * size * (m - size))


def coalitions(m: int, samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
    """Coalitions to evaluate (bool, one row each, never empty nor full), their weights, and whether it is all of them.

    All ``2^m - 2`` when they fit in ``samples`` (kernel weights: the exact
    answer). Otherwise, as shap's KernelExplainer does: whole sizes first,
    the heaviest (1 and m-1, then 2 and m-2, ...) while the budget that the
    kernel's mass gives them covers every coalition of the size, each
    weighted by its share of that mass; the budget left is drawn from the
    other sizes by their mass, uniformly within a size, each draw with its
    complement, sharing the mass left equally.
    """
    if m < 2:
        return np.zeros((0, m), dtype=bool), np.zeros(0), True
    if (1 << m) - 2 <= samples:
        codes = np.arange(1, (1 << m) - 1, dtype=np.int64)
        z = ((codes[:, None] >> np.arange(m)) & 1).astype(bool)
        return z, kernel_weight(m, z.sum(axis=1)), True
    mass = {s: (m - 1) / (s * (m - s)) for s in range(1, m)}
    total = sum(mass.values())
    mass = {s: v / total for s, v in mass.items()}
    rows: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    left, remaining = samples, 1.0
    sizes = list(range(1, m))
    for s in range(1, m // 2 + 1):
        pair = [s] if 2 * s == m else [s, m - s]
        count = sum(math.comb(m, t) for t in pair)
        share = sum(mass[t] for t in pair)
        if count > left or left * share / remaining < count:
            break
        for t in pair:
            z = np.zeros((math.comb(m, t), m), dtype=bool)
            for i, members in enumerate(itertools.combinations(range(m), t)):
                z[i, list(members)] = True
            rows.append(z)
            weights.append(np.full(len(z), mass[t] / len(z)))
            sizes.remove(t)
        left -= count
        remaining -= share
    if left > 0 and sizes:
        p = np.array([mass[t] for t in sizes])
        half = (left + 1) // 2
        s_drawn = rng.choice(np.array(sizes), size=half, p=p / p.sum())
        keys = rng.random((half, m))
        cut = np.sort(keys, axis=1)[np.arange(half), s_drawn - 1]
        z = keys <= cut[:, None]
        drawn = np.concatenate([z, ~z])
        rows.append(drawn)
        weights.append(np.full(len(drawn), remaining / len(drawn)))
    return np.concatenate(rows), np.concatenate(weights), False


def picked(request_ids: Sequence[str], fraction: float) -> np.ndarray:
    """Which requests to explain: the same ones on every worker and every run (a hash of the id, not a draw).

    >>> picked(["a", "b"], 0.0).tolist(), picked(["a", "b"], 1.0).tolist()
    ([False, False], [True, True])
    """
    if fraction <= 0 or not request_ids:
        return np.zeros(len(request_ids), dtype=bool)
    if fraction >= 1:
        return np.ones(len(request_ids), dtype=bool)
    digests = b"".join(hashlib.blake2b(r.encode("utf-8", "surrogatepass"), digest_size=8, person=b"driftline.xpl")
                       .digest() for r in request_ids)  # ~0.5 µs an id: cheap enough for the score path
    return np.frombuffer(digests, dtype=">u8") < np.uint64(int(fraction * 2.0**64))


class ShapleyExplainer:
    """Attributions of rows of one model version against one background (its reference rows).

    Rows are the model's feature matrix; a feature is a group of its columns
    (a one-hot category: all of its columns), taken from the row or from the
    background together. ``score`` scores a matrix, as ``OnnxModel.predict`` does.

    Examples
    --------
    >>> bg = np.array([[0.0, 1.0], [2.0, 1.0]])
    >>> e = ShapleyExplainer(bg, lambda m: 3 * m[:, 0] - m[:, 1])
    >>> a = e.explain(np.array([[4.0, 0.0]]))
    >>> a.phi.round(6).tolist(), a.base
    ([[9.0, 1.0]], 2.0)
    """

    def __init__(self, background: np.ndarray, score: Scorer, *, groups: Sequence[Sequence[int]] | None = None,
                 link_fn: Link = "identity", samples: int = 256, max_rows: int = 65_536, seed: int = 0) -> None:
        background = np.asarray(background)
        if background.ndim != 2 or background.shape[0] == 0 or background.shape[1] == 0:
            raise ValueError(f"background: a non-empty matrix of rows, not shape {background.shape}")
        width = background.shape[1]
        groups = [[j] for j in range(width)] if groups is None else [list(g) for g in groups]
        owner = np.full(width, -1, dtype=np.int64)
        for i, g in enumerate(groups):
            owner[g] = i
        if not groups or (owner < 0).any() or sum(len(g) for g in groups) != width:
            raise ValueError(f"groups: each of the {width} columns in exactly one feature")
        if samples < 2:
            raise ValueError(f"samples: {samples} coalitions; at least 2")
        if max_rows < 1:
            raise ValueError(f"max_rows: {max_rows}; at least 1")
        self.background, self.owner, self.m = background, owner, len(groups)
        self.n = background.shape[0]
        self.score, self.link, self.max_rows = score, link_fn, max_rows
        self.z, self.weights, self.exact = coalitions(self.m, samples, np.random.default_rng(seed))
        self._base: float | None = None

    @property
    def base(self) -> float:
        """v(∅): the background's mean output in link space (one call, on first use)."""
        if self._base is None:
            self._base = float(np.mean(self._output(self.background)))
        return self._base

    @property
    def samples(self) -> int:
        return len(self.z)

    def explain(self, rows: np.ndarray) -> Attributions:
        """Each row's attributions: one call for the rows' own outputs, then batches of coalition × background rows."""
        x = np.asarray(rows, dtype=self.background.dtype)
        if x.ndim != 2 or x.shape[1] != self.background.shape[1]:
            raise ValueError(f"rows: shape {x.shape}, not (n, {self.background.shape[1]})")
        r, m = len(x), self.m
        calls = 1 if self._base is not None else 2
        base = self.base
        if r == 0:
            return Attributions(np.zeros((0, m)), np.zeros(0), base, EXACT if self.exact else KERNEL_SHAP, 0, calls - 1)
        value = self._output(x)
        total = value - base
        if m == 1:
            return Attributions(total[:, None].copy(), value, base, EXACT, 0, calls)
        v, more = self.values(x, self.z)
        y = v - base  # (rows, coalitions)
        z = self.z.astype(np.float64)
        # efficiency as a constraint: the last feature takes what the others leave of f(x) - base
        a = z[:, :-1] - z[:, -1:]
        b = y.T - z[:, -1:] * total[None, :]
        aw = a * self.weights[:, None]
        sol = np.linalg.lstsq(aw.T @ a, aw.T @ b, rcond=None)[0]  # (m-1, rows)
        phi = np.empty((r, m))
        phi[:, :-1] = sol.T
        phi[:, -1] = total - sol.sum(axis=0)
        return Attributions(phi, value, base, EXACT if self.exact else KERNEL_SHAP, self.samples, calls + more)

    def values(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, int]:
        """v(S) for every row of ``x`` and coalition of ``z`` (rows × coalitions), and the calls it took.

        The (row, coalition) pairs are cut into chunks of ``max_rows // n``
        pairs; a chunk is one model call on ``pairs × n`` rows, built by one
        ``np.where`` over the whole chunk.
        """
        r, k = len(x), len(z)
        per = max(1, self.max_rows // self.n)
        out = np.empty(r * k)
        calls = 0
        for start in range(0, r * k, per):
            e = np.arange(start, min(start + per, r * k))
            take = z[e % k][:, self.owner]  # (pairs, columns): the column's feature is in the coalition
            rows = np.where(take[:, None, :], x[e // k][:, None, :], self.background[None, :, :])
            out[e] = self._output(rows.reshape(-1, rows.shape[2])).reshape(len(e), self.n).mean(axis=1)
            calls += 1
        return out.reshape(r, k), calls

    def _output(self, matrix: np.ndarray) -> np.ndarray:
        scores = np.asarray(self.score(matrix), dtype=np.float64)
        if scores.shape != (len(matrix),) or not np.isfinite(scores).all():
            raise ValueError(f"the model gave {scores.shape} scores, not {len(matrix)} finite ones")
        return link(scores, self.link)


def exact_shapley(explainer: ShapleyExplainer, rows: np.ndarray) -> np.ndarray:
    """The Shapley values by their definition (all ``2^M`` coalitions, the combinatorial weights): the reference
    the estimate is tested against. ``M`` of 20 is a million coalitions: for small models only."""
    m = explainer.m
    codes = np.arange(1 << m, dtype=np.int64)
    z = ((codes[:, None] >> np.arange(m)) & 1).astype(bool)
    v, _ = explainer.values(np.asarray(rows, dtype=explainer.background.dtype), z)  # (rows, 2^m): v[:, code]
    size = z.sum(axis=1)
    fact = np.array([math.factorial(int(s)) * math.factorial(m - int(s) - 1) for s in np.minimum(size, m - 1)])
    phi = np.empty((v.shape[0], m))
    for i in range(m):
        without = codes[~z[:, i]]
        phi[:, i] = (v[:, without | (1 << i)] - v[:, without]) @ (fact[without] / math.factorial(m))
    return phi
