"""Coverage of interval methods and false-alarm rates of tests, by simulation on the project's own data.

The truth is known by construction: samples are drawn (with replacement) from each published
per-caption distribution of the embedded run, centred at its own mean, so the true mean is 0.

- Cell means: the 22 cells' per-caption sqnr_db.
- Paired differences: every pair of cells of the same precision (110), and separately the
  heavy-tailed ones (excess kurtosis >= HEAVY_KURTOSIS, the audit's 5 to 17).

For n = 8, 16, 32, 64 captions it prints, as markdown:

1. the coverage (and mean width, dB) of 95% intervals: the percentile bootstrap the project used
   before issue 24 (stats.mean_interval then, evaluated with its own resamples, see below) and the
   candidates of benchmark.results.inference;
2. how often "p < 0.05" comes out under the null: the paired bootstrap test used before
   (stats.paired_test then) and inference.sign_flip_test;
3. the family-wise false-alarm rate of a Holm gate over 44 and 104 one-sided tests of 32 captions
   under a heavy-tailed null (the gate's paired bootstrap, benchmark/reports/check.py, against
   Holm over exact sign-flip p-values), and the power to flag one cell that dropped.

"Before" is the former stats.mean_interval / stats.paired_test exactly (kept below as
``percentile_interval`` / ``percentile_paired_p``, since stats.py now serves inference's methods):
both resample with random.Random(0), the same indices for every call of the same size, so the
script builds those indices once and applies them to all samples as a matrix product; it checks
the result against those functions on the first samples of every row. The gate's Holm over
sign-flip p-values computes an exact p-value wherever it could matter: a screening count of
random sign patterns rules a test out only when a p-value below Holm's threshold would make that
count impossible (Chernoff bound, chance of a wrong call below 1e-6 over the whole run).

Usage: .venv/bin/python scripts/coverage.py [--replications N] [--families N] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from functools import cache
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.results import inference

RESULTS = Path(__file__).resolve().parents[1] / "leaderboard" / "embedded" / "results.json"
METRIC = "sqnr_db"
SIZES = (8, 16, 32, 64)
GATE_SIZES = (44, 104)       # the gate's family today (cells x metrics) and one past 1 / 2001
GATE_CAPTIONS = 32
HEAVY_KURTOSIS = 5.0         # the audit: paired differences with excess kurtosis 5 to 17
TOLERANCE = 1.5              # points of coverage from nominal that a method may miss by
ALPHA = inference.ALPHA
SCREEN_DRAWS = 2000          # random sign patterns per gate test for the screening count
SYMMETRISED = "differences, symmetrised"   # each with its mirror image: the same tails, no skew
CHECKED = 5                  # samples per row checked against percentile_interval / percentile_paired_p
# The percentile bootstrap's settings, as benchmark/results/stats.py recorded them before issue 24.
BOOTSTRAP = {"method": "percentile bootstrap over captions", "level": 0.95, "resamples": 2000, "seed": 0}
BEFORE = "before: percentile bootstrap"
CANDIDATES = {"t": "t", "bootstrap-t": "bootstrap-t (symmetric)",
              "bootstrap-t equal-tailed": "bootstrap-t (equal-tailed)", "bca": "BCa",
              "sign-flip": "sign-flip inversion"}


# -- the data -----------------------------------------------------------------------------------------------

def excess_kurtosis(x: np.ndarray) -> float:
    z = (x - x.mean()) / x.std()
    return float(np.mean(z ** 4) - 3)


def distributions(path: Path) -> dict[str, list[np.ndarray]]:
    """Centred per-caption distributions: cells, paired differences, heavy-tailed differences."""
    cells = json.loads(path.read_text())["cells"]
    by_precision: dict[str, list[np.ndarray]] = {}
    for cell in cells.values():
        values = (cell.get("per_sample") or {}).get(METRIC)
        if cell.get("status") != "ok" or not values:
            continue
        x = np.asarray(values, dtype=float)
        if np.all(np.isfinite(x)):
            by_precision.setdefault(cell["precision"], []).append(x)
    cell_values = [x for group in by_precision.values() for x in group]
    differences = [a - b for group in by_precision.values() for a, b in itertools.combinations(group, 2)
                   if len(a) == len(b)]
    heavy = [d for d in differences if excess_kurtosis(d) >= HEAVY_KURTOSIS]
    centre = lambda group: [x - x.mean() for x in group if x.std() > 0]
    out = {"cell means": centre(cell_values), "differences": centre(differences)}
    if heavy:
        out[f"differences, kurtosis >= {HEAVY_KURTOSIS:g}"] = centre(heavy)
    out[SYMMETRISED] = [np.concatenate((d, -d)) for d in out["differences"]]
    return out


def draw(rng: np.random.Generator, group: list[np.ndarray], n: int, replications: int) -> tuple[np.ndarray, np.ndarray]:
    """(samples, which distribution): ``replications`` spread evenly over the group's distributions."""
    per = math.ceil(replications / len(group))
    samples = np.concatenate([rng.choice(x, size=(per, n)) for x in group])
    return samples, np.repeat(np.arange(len(group)), per)


# -- the methods used before, with their own resamples -------------------------------------------------

def _resampled_means(values: list[float]) -> list[float]:
    rng = random.Random(BOOTSTRAP["seed"])
    n = len(values)
    return sorted(math.fsum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(BOOTSTRAP["resamples"]))


def percentile_interval(values: list[float]) -> tuple[float, float]:
    """The former stats.mean_interval, verbatim in effect: (low, high) of the percentile bootstrap,
    linear between order statistics."""
    means = _resampled_means(values)
    tail = (1 - BOOTSTRAP["level"]) / 2

    def quantile(q):
        position = q * (len(means) - 1)
        lower = math.floor(position)
        upper = min(lower + 1, len(means) - 1)
        return means[lower] + (means[upper] - means[lower]) * (position - lower)

    return quantile(tail), quantile(1 - tail)


def percentile_paired_p(differences: list[float]) -> float:
    """The former stats.paired_test's two-sided p-value of "mean difference 0"."""
    means = _resampled_means(differences)
    below, above = sum(m <= 0 for m in means), sum(m >= 0 for m in means)
    return min(1.0, 2 * (min(below, above) + 1) / (BOOTSTRAP["resamples"] + 1))


@cache
def stats_counts(n: int) -> np.ndarray:
    """The resamples percentile_interval and percentile_paired_p draw for n values (random.Random(seed),
    n indices per resample), as counts per value: the same for every call of size n."""
    rng = random.Random(BOOTSTRAP["seed"])
    resamples = BOOTSTRAP["resamples"]
    index = np.array([rng.randrange(n) for _ in range(n * resamples)]).reshape(resamples, n)
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.repeat(np.arange(resamples), n), index.ravel()), 1)
    return counts


def before_means(samples: np.ndarray) -> np.ndarray:
    return samples @ stats_counts(samples.shape[1]).T / samples.shape[1]


def before_interval(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - BOOTSTRAP["level"]) / 2
    low, high = np.quantile(before_means(samples), [tail, 1 - tail], axis=1)  # linear, as percentile_interval
    return low, high


def before_p(samples: np.ndarray) -> np.ndarray:
    """percentile_paired_p's two-sided p-value of "mean 0", for every row."""
    means = before_means(samples)
    below, above = (means <= 0).sum(axis=1), (means >= 0).sum(axis=1)
    return np.minimum(1.0, 2 * (np.minimum(below, above) + 1) / (BOOTSTRAP["resamples"] + 1))


def check_before(samples: np.ndarray) -> float:
    """Largest disagreement with percentile_interval / percentile_paired_p on the first samples."""
    worst = 0.0
    low, high = before_interval(samples[:CHECKED])
    p = before_p(samples[:CHECKED])
    for i, row in enumerate(samples[:CHECKED]):
        interval = percentile_interval(row.tolist())
        worst = max(worst, abs(interval[0] - low[i]), abs(interval[1] - high[i]),
                    abs(percentile_paired_p(row.tolist()) - p[i]))
    return worst


# -- 1. coverage --------------------------------------------------------------------------------------------

def coverage_table(groups, rng, replications) -> tuple[list[str], dict, float]:
    columns = [BEFORE] + list(CANDIDATES.values())
    lines = ["| data | n | samples | " + " | ".join(columns) + " |", "|" + "---|" * (3 + len(columns))]
    rates: dict[str, dict[tuple[str, int], float]] = {c: {} for c in columns}
    worst_check = 0.0
    for name, group in groups.items():
        if name == SYMMETRISED:
            continue
        for n in SIZES:
            samples, _ = draw(rng, group, n, replications)
            worst_check = max(worst_check, check_before(samples))
            bounds = {BEFORE: before_interval(samples)}
            for method, label in CANDIDATES.items():
                _, low, high = inference.mean_intervals(samples, inference.LEVEL, method)
                bounds[label] = (low, high)
            cells = []
            for column in columns:
                low, high = bounds[column]
                covered = 100 * float(np.mean((low <= 0) & (high >= 0)))
                width = float(np.mean(high - low))
                rates[column][name, n] = covered
                cells.append(f"{covered:.1f} ({width:.2f})")
            lines.append(f"| {name} | {n} | {len(samples)} | " + " | ".join(cells) + " |")
    return lines, rates, worst_check


def verdict(rates: dict, nominal: float) -> list[str]:
    out = []
    def within(column, keep):
        return all(abs(v - nominal) <= TOLERANCE for key, v in rates[column].items() if keep(key))
    main = lambda key: not key[0].startswith("differences, kurtosis")
    for words, keep in [("every row", lambda key: True),
                        ("every cell-mean and difference row (heavy-tail rows aside)", main),
                        (f"every row with n >= {inference.SMALL_SAMPLE}", lambda key: key[1] >= inference.SMALL_SAMPLE),
                        (f"every cell-mean and difference row with n >= {inference.SMALL_SAMPLE}",
                         lambda key: main(key) and key[1] >= inference.SMALL_SAMPLE)]:
        ok = [c for c in rates if within(c, keep)]
        out.append(f"- within {TOLERANCE} points of {nominal:g}% on {words}: {', '.join(ok) if ok else 'none'}")
    worst = {c: max(rates[c].items(), key=lambda item: abs(item[1] - nominal)) for c in rates}
    ranked = sorted(worst, key=lambda c: abs(worst[c][1] - nominal))
    chosen = CANDIDATES[inference.DEFAULT_METHOD]
    out.append(f"- inference.mean_interval's default: {chosen}, worst row {worst[chosen][1]:.1f} "
               f"({worst[chosen][0][0]}, n = {worst[chosen][0][1]})")
    out.append("- worst row per method: " + "; ".join(
        f"{c}: {worst[c][1]:.1f} ({worst[c][0][0]}, n = {worst[c][0][1]})" for c in ranked))
    return out


# -- 2. false alarms of a single test --------------------------------------------------------------------

def false_alarm_table(groups, rng, replications) -> tuple[list[str], float]:
    header = ("| data | n | samples | before: paired bootstrap | after: sign-flip | sign-flip exact | "
              f"chosen interval ({inference.DEFAULT_METHOD}) excludes 0 |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    worst_check = 0.0
    for name, group in groups.items():
        if name == "cell means":
            continue
        for n in SIZES:
            samples, _ = draw(rng, group, n, replications)
            worst_check = max(worst_check, check_before(samples))
            before = 100 * float(np.mean(before_p(samples) < ALPHA))
            tests = [inference.sign_flip_test(row, min_alpha=ALPHA) for row in samples]
            after = 100 * float(np.mean([t.p < ALPHA for t in tests]))
            _, low, high = inference.mean_intervals(samples)
            chosen = 100 * float(np.mean((low > 0) | (high < 0)))
            lines.append(f"| {name} | {n} | {len(samples)} | {before:.1f} | {after:.1f} | "
                         f"{'yes' if all(t.exact for t in tests) else 'no (Monte Carlo)'} | {chosen:.1f} |")
    return lines, worst_check


# -- 3. the Holm gate ------------------------------------------------------------------------------------------

@cache
def screen_limit(tau: float, draws: int, delta: float) -> int:
    """Smallest K with P(Binomial(draws, tau) >= K) <= delta (Chernoff): a test whose screening
    count reaches K has a p-value above tau, but for a chance below delta."""
    for k in range(math.ceil(draws * tau) + 1, draws + 1):
        q = k / draws
        kl = q * math.log(q / tau) + ((1 - q) * math.log((1 - q) / (1 - tau)) if q < 1 else 0.0)
        if draws * kl >= math.log(1 / delta):
            return k
    return draws + 1


def screening_counts(tests: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """Per test (rows of per-caption run - baseline differences): how many random sign patterns
    give a sum strictly below the observed one (flipped values summing > 0); at most the count
    the exact one-sided ("less") p-value's criterion gives."""
    counts = np.empty(len(tests), dtype=int)
    for start in range(0, len(tests), 4096):
        counts[start:start + 4096] = ((tests[start:start + 4096] @ patterns.T) > 0).sum(axis=1)
    return counts


def holm_sign_flip(family: np.ndarray, counts: np.ndarray, delta: float) -> set[int]:
    """The tests Holm rejects at ALPHA over one-sided ("less") sign-flip p-values; exact p-values
    computed lazily for the tests that the screening counts cannot rule out at each step."""
    m = len(family)
    exact: dict[int, float] = {}
    rejected: set[int] = set()
    for step in range(m):
        tau = ALPHA / (m - step)
        limit = screen_limit(tau, SCREEN_DRAWS, delta)
        for i in np.flatnonzero(counts < limit):
            if int(i) not in exact:
                exact[int(i)] = inference.sign_flip_test(family[i], "less").p
        known = sorted(exact.items(), key=lambda item: item[1])
        if step < len(known) and known[step][1] <= tau:
            rejected.add(known[step][0])
        else:
            break
    return rejected


def holm_bootstrap(p_lower: np.ndarray) -> np.ndarray:
    """check.py's Holm (strict <) per family (rows): which tests are rejected."""
    m = p_lower.shape[1]
    order = np.argsort(p_lower, axis=1, kind="stable")
    ordered = np.take_along_axis(p_lower, order, axis=1)
    passed = np.cumprod(ordered < ALPHA / (m - np.arange(m)), axis=1).astype(bool)
    rejected = np.zeros_like(passed)
    np.put_along_axis(rejected, order, passed, axis=1)
    return rejected


def gate_table(differences, rng, families, effect) -> list[str]:
    header = ("| null | tests m | Holm's first threshold | FWER before | FWER after | "
              f"power before (drop {effect:g} sd) | power after |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    patterns = rng.integers(0, 2, size=(SCREEN_DRAWS, GATE_CAPTIONS)).astype(float)
    delta = 1e-6 / (4 * families * sum(GATE_SIZES))              # all screened tests of the run together
    lengths = np.array([len(d) for d in differences])
    padded = np.zeros((len(differences), lengths.max()))
    for i, d in enumerate(differences):
        padded[i, :len(d)] = d
    for kind in ("symmetric", "skewed"):
        for m in GATE_SIZES:
            which = rng.integers(0, len(differences), size=(families, m))
            index = (rng.random((families, m, GATE_CAPTIONS)) * lengths[which][..., None]).astype(int)
            # symmetric: every caption's difference flips sign at random (rerun noise that goes either
            # way, the sign-flip test's assumption); skewed: a cell pair's differences as they are
            signs = rng.choice([-1.0, 1.0], size=(families, m, GATE_CAPTIONS if kind == "symmetric" else 1))
            null = padded[which[..., None], index] * signs
            drop = null.copy()
            drop[:, 0, :] -= effect * padded[which[:, 0]].std(axis=1, ddof=1)[:, None]  # test 0: the run dropped
            row = {}
            for scenario, data in (("null", null), ("drop", drop)):
                flat = data.reshape(families * m, GATE_CAPTIONS)
                p_two = before_p(flat).reshape(families, m)
                lower = (flat.mean(axis=1) < 0).reshape(families, m)
                before = holm_bootstrap(np.where(lower, p_two / 2, 1 - p_two / 2))  # one-sided, as check.py
                counts = screening_counts(flat, patterns).reshape(families, m)
                after = [holm_sign_flip(data[f], counts[f], delta) for f in range(families)]
                if scenario == "null":
                    row["fwer before"] = 100 * float(np.mean(before.any(axis=1)))
                    row["fwer after"] = 100 * float(np.mean([bool(r) for r in after]))
                else:
                    row["power before"] = 100 * float(np.mean(before[:, 0]))
                    row["power after"] = 100 * float(np.mean([0 in r for r in after]))
            lines.append(f"| {kind} | {m} | {ALPHA / m:.2e} | {row['fwer before']:.1f} | {row['fwer after']:.1f} | "
                         f"{row['power before']:.1f} | {row['power after']:.1f} |")
    return lines


def check_lazy_holm(differences, rng, m: int = 20) -> bool:
    """The lazy Holm agrees with inference.holm over every exact p-value (a few families)."""
    patterns = rng.integers(0, 2, size=(SCREEN_DRAWS, GATE_CAPTIONS)).astype(float)
    for trial in range(3):
        family = np.stack([rng.choice(differences[i], GATE_CAPTIONS) for i in rng.integers(0, len(differences), m)])
        family[: trial + 1] -= 2 * family.std()                  # some tests to reject
        counts = screening_counts(family, patterns)
        full = inference.holm([inference.sign_flip_test(row, "less").p for row in family], ALPHA)
        if holm_sign_flip(family, counts, 1e-9) != {i for i, r in enumerate(full) if r}:
            return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=2000,
                        help="samples per row (default 2000: +-1 point, 95%% Monte Carlo interval at 95%% coverage)")
    parser.add_argument("--families", type=int, default=None,
                        help="gate families per size (default: replications / 2)")
    parser.add_argument("--effect", type=float, default=1.0,
                        help="the drop of the one regressed cell, in standard deviations of its differences")
    parser.add_argument("--quick", action="store_true", help="200 samples per row, 100 families: a smoke run")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    replications = 200 if args.quick else args.replications
    families = args.families or (100 if args.quick else max(1, replications // 2))
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    groups = distributions(args.results)
    kurtosis = [excess_kurtosis(d) for d in groups["differences"]]
    nominal = 100 * inference.LEVEL
    print(f"# Coverage and false alarms on {args.results.name} ({METRIC})\n")
    print(f"{len(groups['cell means'])} cells, {len(groups['differences'])} paired differences (excess kurtosis "
          f"{min(kurtosis):.1f} to {max(kurtosis):.1f}), "
          f"{len(groups.get(f'differences, kurtosis >= {HEAVY_KURTOSIS:g}', []))} with kurtosis >= {HEAVY_KURTOSIS:g}; "
          f"each centred at its own mean; {replications} samples per row, seed {args.seed}.\n")

    lines, rates, worst_a = coverage_table(groups, rng, replications)
    print(f"## 1. Coverage of {nominal:g}% intervals, % (mean width, dB)\n")
    print("\n".join(lines))
    print(f"\nMonte Carlo standard error of a coverage near {nominal:g}%: "
          f"{100 * math.sqrt(inference.LEVEL * inference.ALPHA / replications):.2f} points.\n")
    print("\n".join(verdict(rates, nominal)))
    t1 = time.perf_counter()

    lines, worst_b = false_alarm_table(groups, rng, replications)
    print(f"\n## 2. False alarms under the null: % of two-sided p < {ALPHA:g} (nominal {100 * ALPHA:g})\n")
    print("\n".join(lines))
    print(f"\nbefore = the paired bootstrap test used before issue 24; checked against it on the first "
          f"{CHECKED} samples of every row: largest difference {max(worst_a, worst_b):.1e}")
    t2 = time.perf_counter()

    heavy = groups.get(f"differences, kurtosis >= {HEAVY_KURTOSIS:g}") or groups["differences"]
    lines = gate_table(groups["differences"], rng, families, args.effect)
    print(f"\n## 3. Holm gate over m one-sided tests of {GATE_CAPTIONS} captions at family-wise {ALPHA:g}: "
          f"{families} families each\n")
    print("\n".join(lines))
    print(f"\nEach test: {GATE_CAPTIONS} captions resampled from one of the {len(groups['differences'])} centred "
          "paired differences; symmetric: each caption's sign flipped at random, skewed: the pair's differences as "
          f"they are, either orientation. Power: test 0 of each family dropped by {args.effect:g} sd. before = the "
          f"gate's one-sided paired bootstrap with check.py's Holm (smallest p 1/{BOOTSTRAP['resamples'] + 1}); "
          "after = exact one-sided sign-flip p-values (smallest 2**-32) with Holm. The lazy Holm used here agrees "
          f"with inference.holm over all exact p-values: {check_lazy_holm(heavy, rng)}.")
    t3 = time.perf_counter()
    print(f"\ntime: coverage {t1 - start:.0f} s, false alarms {t2 - t1:.0f} s, gate {t3 - t2:.0f} s, "
          f"total {t3 - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
