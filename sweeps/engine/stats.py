"""The statistics every table, plot and report uses: one measure of spread per kind of number, one test.

- A cell (one variant's accuracy over seeds) is `mean ± std over n`.
- A Δ (a variant minus the baseline, paired by seed: same initialisation and data order) is its mean with a 95%
  Student-t interval, and its significance comes from the exact paired sign-flip (permutation) test. That test
  assumes only that, without an effect, each seed's difference is as likely to have either sign; it holds for
  quantised accuracies and for differences that all agree, where a t-interval of zero width would claim certainty.
  With n pairs its p-value cannot go below 2^(1-n): three seeds can never show p < 0.05, and the tables say so.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
# Fewer pairs than this: a t-interval's width means nothing (t(0.975, 1) = 12.7), so none is printed.
MIN_PAIRS_FOR_INTERVAL = 3
# Up to this many pairs every sign assignment is enumerated (2^20 sums); above, a seeded sample of them is used.
EXACT_UP_TO = 20
SAMPLED_FLIPS = 200_000
# Sign assignments held at once (a block of rows x n floats): memory stays flat with the number of seeds.
FLIPS_PER_BLOCK = 4096
# Accuracies are sums of 1/test-set-size steps: sums within this of each other are equal, not rounding noise apart.
TIE_TOLERANCE = 1e-9
DELTA_NOTE = (
    "Δ rows: mean of the paired differences (same seed: same initialisation and data order) ± the half-width of "
    "their 95% interval (Student's t, n−1 degrees of freedom; none for n < 3, marked 'n too small'). "
    "* marks p < 0.05 under the exact two-sided paired sign-flip (permutation) test, which with n seeds cannot give "
    "p below 2^(1−n) (n = 3: 0.25, n = 5: 0.0625, n = 6: 0.03125), so few seeds are never starred. "
    "Cells: mean ± std over the seeds; (n=k) marks cells with fewer seeds than planned."
)


@dataclass(frozen=True)
class PairedDelta:
    """Paired differences variant − baseline over the seeds both ran."""

    mean: float
    half_width: float  # of the 95% t-interval; nan when n < MIN_PAIRS_FOR_INTERVAL
    p_value: float  # exact two-sided sign-flip test
    n: int
    wins: int
    losses: int
    ties: int

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    @property
    def interval(self) -> tuple[float, float]:
        return self.mean - self.half_width, self.mean + self.half_width


def sign_flip_p_value(differences: Sequence[float]) -> float:
    """Two-sided p of the exact paired sign-flip test: the share of the 2^n sign assignments whose |sum| is at
    least the observed |sum|. All-zero differences give 1; n equal non-zero differences give 2^(1-n)."""
    values = np.asarray(differences, dtype=float)
    n = len(values)
    if n == 0:
        return float("nan")
    observed = abs(values.sum())
    tolerance = TIE_TOLERANCE * max(1.0, float(np.abs(values).sum()))
    if n <= EXACT_UP_TO:
        extreme = sum(np.sum(np.abs(signs @ values) >= observed - tolerance) for signs in _all_signs(n))
        return float(extreme / 2**n)
    # Too many assignments to enumerate: a fixed-seed sample, counting the observed one (an unbiased, valid p).
    generator = np.random.default_rng(0)
    extreme = 0
    for start in range(0, SAMPLED_FLIPS, FLIPS_PER_BLOCK):
        signs = generator.choice((1.0, -1.0), size=(min(FLIPS_PER_BLOCK, SAMPLED_FLIPS - start), n))
        extreme += np.sum(np.abs(signs @ values) >= observed - tolerance)
    return float((extreme + 1) / (SAMPLED_FLIPS + 1))


def _all_signs(n: int) -> Iterator[np.ndarray]:
    """Every assignment of n signs, a block of rows at a time (bit j of the row's number is sign j)."""
    for start in range(0, 2**n, FLIPS_PER_BLOCK):
        numbers = np.arange(start, min(start + FLIPS_PER_BLOCK, 2**n), dtype=np.int64)
        yield 1.0 - 2.0 * ((numbers[:, None] >> np.arange(n)) & 1)


def t_half_width(differences: Sequence[float]) -> float:
    """Half-width of the 95% Student-t interval of the mean; nan below MIN_PAIRS_FOR_INTERVAL values."""
    n = len(differences)
    if n < MIN_PAIRS_FOR_INTERVAL:
        return float("nan")
    from scipy import stats  # a second to import: only when a table is built

    std = float(np.std(np.asarray(differences, dtype=float), ddof=1))
    return float(stats.t.ppf(1 - ALPHA / 2, n - 1) * std / math.sqrt(n))


def paired_delta(variant: dict[int, float] | None, baseline: dict[int, float] | None) -> PairedDelta | None:
    """Variant − baseline over the seeds both ran (None when none did)."""
    seeds = sorted(set(variant or {}) & set(baseline or {}))
    if not seeds:
        return None
    assert variant is not None and baseline is not None
    return delta_of([variant[s] - baseline[s] for s in seeds])


def delta_of(differences: Sequence[float]) -> PairedDelta:
    """Mean, 95% interval, sign-flip p and win/loss/tie count of per-seed differences."""
    values = [float(d) for d in differences]
    wins = sum(d > TIE_TOLERANCE for d in values)
    losses = sum(d < -TIE_TOLERANCE for d in values)
    return PairedDelta(
        mean=float(np.mean(values)),
        half_width=t_half_width(values),
        p_value=sign_flip_p_value(values),
        n=len(values),
        wins=wins,
        losses=losses,
        ties=len(values) - wins - losses,
    )


def smallest_p(n: int) -> float:
    """The smallest two-sided p the sign-flip test can give with n pairs."""
    return 2.0 ** (1 - n) if n > 0 else 1.0


def signed(value: float) -> str:
    """`+1.20` / `-0.40`, never `-0.00`."""
    return f"{value + 0.0:+.2f}".replace("-0.00", "+0.00")


def format_delta(delta: PairedDelta | None, seeds: int, missing: str) -> str:
    """`+1.20 ± 0.45*` (* when p < 0.05 under the sign-flip test); `+2.50 (n=2 too small)` without an interval;
    `(n=k)` when fewer than `seeds` pairs made it."""
    if delta is None:
        return missing
    text = signed(delta.mean)
    if delta.n >= MIN_PAIRS_FOR_INTERVAL:
        text += f" ± {delta.half_width:.2f}" + ("*" if delta.significant else "")
        return text if delta.n >= seeds else f"{text} (n={delta.n})"
    return f"{text} (n={delta.n} too small)"


def format_p(p_value: float) -> str:
    return f"{p_value:.3g}" if p_value >= 0.001 else "<0.001"


def format_cell(stat: tuple[float, float, int] | None, seeds: int, missing: str) -> str:
    """`mean ± std` of (mean, std, n), marked `(n=k)` when fewer than `seeds` values made it."""
    if stat is None:
        return missing
    mean, std, n = stat
    text = f"{mean:.2f}" if n < 2 else f"{mean:.2f} ± {std:.2f}"
    return text if n >= seeds else f"{text} (n={n})"
