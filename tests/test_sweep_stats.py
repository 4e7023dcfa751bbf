"""The statistics behind every Δ and pooled row: the exact sign-flip test against p-values counted by hand, the
t-interval, and what a table says when there are too few seeds to conclude anything."""

from __future__ import annotations

import math
import tracemalloc

import pandas as pd
import pytest

from sweeps.engine.result_table import MISSING, build_table, pooled_delta, values_by_seed
from sweeps.engine.spec import GP, Preset, SweepSpec, expand
from sweeps.engine.stats import delta_of, format_delta, paired_delta, sign_flip_p_value, smallest_p


@pytest.mark.parametrize(
    ("differences", "p_value"),
    [
        # 2^3 sign assignments of (1, 3, 0); the 0 never changes a sum: |±1 ±3| >= 4 for 2 of 4 -> 4/8
        ([1.0, 3.0, 0.0], 0.5),
        # three seeds that agree (quantised accuracies: one digits image = 0.28 points): 2 of 8 assignments
        ([0.28, 0.28, 0.28], 0.25),
        ([1.0, 2.0, 3.0, 4.0], 2 / 16),  # only all-plus and all-minus reach |10|
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2 / 64),  # six that agree: the first n that can reach p < 0.05
        # observed |21 - 2*6| = 9: negated subsets of {1..6} summing to <= 6 (14 of them) or >= 15 (14) -> 28/64
        ([1.0, 2.0, 3.0, 4.0, 5.0, -6.0], 28 / 64),
        ([0.0, 0.0, 0.0], 1.0),  # no difference at all
        ([-0.5], 1.0),  # one pair: both signs are as extreme
    ],
)
def test_sign_flip_p_equals_the_hand_counted_exact_value(differences: list[float], p_value: float) -> None:
    assert sign_flip_p_value(differences) == pytest.approx(p_value, abs=1e-12)


def test_the_smallest_p_n_seeds_allow_is_two_to_the_one_minus_n() -> None:
    for n in range(1, 9):
        assert sign_flip_p_value([0.7] * n) == pytest.approx(smallest_p(n)) == pytest.approx(2.0 ** (1 - n))
    # Beyond exact enumeration a seeded sample gives a valid p near the exact one.
    assert sign_flip_p_value([0.1] * 21 + [-0.1] * 4) == pytest.approx(0.0009, abs=0.0004)


def test_the_sign_flip_test_holds_a_block_of_assignments_at_a_time_however_many_seeds() -> None:
    """A sweep of 1,280 trials pairs 320 seeds: the test's memory must not grow with them (it took 1 GB)."""
    for n in (20, 320):  # every assignment enumerated; a sample of them
        tracemalloc.start()
        sign_flip_p_value([0.28 * (-1) ** (i // 3) + 0.1 for i in range(n)])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 64 * 2**20, (n, peak)


def test_delta_pairs_runs_by_seed_with_a_t_interval_and_counts_wins_losses_ties() -> None:
    delta = paired_delta({1: 91.0, 2: 93.0, 3: 92.0}, {1: 90.0, 2: 90.0, 3: 92.0, 4: 80.0})  # seed 4: no pair
    assert delta is not None
    assert (round(delta.mean, 4), round(delta.half_width, 4), delta.n) == (1.3333, 3.7946, 3)  # t(0.975, 2) = 4.303
    assert (delta.wins, delta.losses, delta.ties, delta.p_value) == (2, 0, 1, 0.5)
    assert format_delta(delta, 3, MISSING) == "+1.33 ± 3.79"
    assert paired_delta(None, {1: 90.0}) is None and format_delta(None, 3, MISSING) == MISSING


def test_a_zero_variance_difference_is_not_starred_unless_the_sign_flip_test_allows_it() -> None:
    # Issue 16's case: +0.28 on each of 3 seeds gave "+0.28 ± 0.00*" under a t-interval of zero width.
    three = delta_of([0.28, 0.28, 0.28])
    assert three.half_width == 0.0 and not three.significant
    assert format_delta(three, 3, MISSING) == "+0.28 ± 0.00"
    six = delta_of([0.28] * 6)  # p = 2/64: six seeds that all agree are evidence
    assert format_delta(six, 6, MISSING) == "+0.28 ± 0.00*"
    assert format_delta(delta_of([-0.28] * 6), 6, MISSING) == "-0.28 ± 0.00*"


def test_too_few_seeds_say_so_instead_of_printing_a_width() -> None:
    two = delta_of([20.15, -15.15])  # t(0.975, 1) = 12.7 would print "+2.50 ± 224.2"
    assert math.isnan(two.half_width) and two.n == 2
    assert format_delta(two, 2, MISSING) == "+2.50 (n=2 too small)"
    assert format_delta(delta_of([-0.4]), 3, MISSING) == "-0.40 (n=1 too small)"
    assert format_delta(delta_of([1.0, 1.0, 1.0]), 5, MISSING) == "+1.00 ± 0.00 (n=3)"  # fewer seeds than planned


def test_pooled_row_is_the_per_seed_mean_of_the_paired_difference_over_the_high_sparsity_levels() -> None:
    preset = Preset("t", networks=("mlp",), datasets=("digits",), seeds=4, trial={"epochs": 1, "cycles": 12})
    spec = SweepSpec("t", "T", methods=(GP,), presets={"t": preset}, default_preset="t")
    plan = expand(spec, "t")
    gains = {1: 1.0, 2: 0.5, 3: -0.25, 4: 0.0}  # AP's gain per seed at the pooled levels
    rows = []
    for trial in plan.trials:
        seed, ap = trial.config.seed, trial.config.ap.enabled
        for cycle in range(13):
            level = round(100 * 0.8**cycle, 1)
            # AP's gain only at or below 10.7%, plus a cycle-dependent wobble that the pooling averages
            gain = (gains[seed] + 0.1 * (cycle % 2)) if ap and level <= 10.7 else 0.0
            rows.append(
                {"trial": trial.name, **trial.labels, "cycle": cycle, "weights_remaining": 100 * 0.8**cycle,
                 "level": level, "test_acc": 80.0 + seed + gain, "dnr": 0.5}
            )  # fmt: skip
    frame = pd.DataFrame(rows)
    table = build_table(frame, plan)
    pooled = table.pooled.loc[("mlp", "GP", "Δ(AP)")]
    # levels 10.7, 8.6, 6.9 (cycles 10, 11, 12): wobble 0, 0.1, 0 -> +1/30 on every seed
    per_seed = [gains[s] + 0.1 / 3 for s in (1, 2, 3, 4)]
    expected = delta_of(per_seed)
    assert pooled["levels pooled (%)"] == "10.7 to 6.9 (3 levels)"
    assert pooled["Δ mean"] == f"{sum(per_seed) / 4:+.2f}"
    assert pooled["n"] == "4" and pooled["W/L/T"] == "3/1/0"
    # per-seed diffs 1.033, 0.533, -0.217, 0.033, |sum| 1.383: reached only with 1.033 and 0.533 of one sign
    # (else at most 0.5 + 0.25), then by 3 of the 4 signs of the other two (not both against) -> 2 * 3 / 16
    assert expected.p_value == pytest.approx(6 / 16)
    assert pooled["p (sign-flip)"] == "0.375 (min 0.125)"
    low, high = expected.interval
    assert pooled["95% interval"] == f"[{low:+.2f}, {high:+.2f}]"
    by_seed = values_by_seed(frame, ["dataset", "network", "method", "variant", "level"])
    key = ("digits", "mlp", "GP")
    assert pooled_delta(by_seed, (*key, "AP"), (*key, "no AP"), []) is None  # no level at or below the threshold
    # A stricter threshold pools fewer levels.
    assert build_table(frame, plan, pool_below=8.6).pooled.iloc[0, 0] == "8.6 to 6.9 (2 levels)"
    assert "--pool-below" in table.pooled_note
