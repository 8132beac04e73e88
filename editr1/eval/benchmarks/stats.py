"""How sure a benchmark difference is: a paired, stratified bootstrap, and the judge's own spread.

Benchmarks report the unweighted mean of their per-type means, so the uncertainty of a difference
between two evaluations A and B of the same samples comes from resampling samples within each type.
Pure numpy; the same seed gives the same numbers.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Resampled means are computed this many sample draws at a time (bounds the memory of large types).
CHUNK_DRAWS = 2_000_000


def _type_rng(seed: int, name: str) -> np.random.Generator:
    """A stream per type, so a type's interval does not depend on which other types are present."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def _resampled_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = len(values)
    per_chunk = max(1, CHUNK_DRAWS // n)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, per_chunk):
        stop = min(n_resamples, start + per_chunk)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def paired_bootstrap(diffs_by_type: Mapping[str, Sequence[float] | np.ndarray], n_resamples: int = 10000,
                     seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap intervals for a paired difference B - A, per type and overall.

    `diffs_by_type[type]` holds, per sample of that type, B's score minus A's (finite: leave out samples
    either evaluation could not score). A type's result is the mean difference and the interval of the
    means of `n_resamples` resamples of its samples (with replacement). Overall is the unweighted mean of
    the type means, as the benchmarks aggregate; its interval resamples within every type jointly
    (stratified: resample r of the overall mean is the mean of each type's resample r).

    Returns `{"types": {type: {"n", "mean", "low", "high"}}, "overall": {"n", "n_types", "mean", "low",
    "high"}, "confidence", "n_resamples", "seed"}`.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not diffs_by_type:
        raise ValueError("no types to compare")
    tails = [(1 - confidence) / 2, 1 - (1 - confidence) / 2]
    types: dict[str, dict[str, Any]] = {}
    resampled = []
    for name in sorted(diffs_by_type):
        values = np.asarray(diffs_by_type[name], dtype=np.float64).ravel()
        if values.size == 0:
            raise ValueError(f"type {name!r}: no samples")
        if not np.isfinite(values).all():
            raise ValueError(f"type {name!r}: {int((~np.isfinite(values)).sum())} difference(s) are not finite; "
                             f"leave out the samples that either evaluation could not score")
        means = _resampled_means(values, n_resamples, _type_rng(seed, name))
        low, high = np.quantile(means, tails)
        types[name] = {"n": int(values.size), "mean": float(values.mean()), "low": float(low), "high": float(high)}
        resampled.append(means)
    overall_means = np.mean(resampled, axis=0)
    low, high = np.quantile(overall_means, tails)
    overall = {"n": sum(t["n"] for t in types.values()), "n_types": len(types),
               "mean": float(np.mean([t["mean"] for t in types.values()])), "low": float(low), "high": float(high)}
    return {"types": types, "overall": overall, "confidence": confidence, "n_resamples": int(n_resamples),
            "seed": int(seed)}


def judge_spread(scores_by_repeat: np.ndarray | Sequence[Sequence[float]],
                 types: Sequence[str] | None = None) -> dict[str, Any]:
    """How much a judge's scores move when it is asked the same samples again.

    `scores_by_repeat` has shape (repeats, samples); NaN marks a score the judge did not give (unparsable
    or failed). Returns:

    - `per_sample_std`: the standard deviation (ddof 1) of each sample's scores across repeats, averaged
      over the samples with at least two scores: how far one sample's score typically moves when judged
      again (the judge's noise per item).
    - `mean_std`: the standard deviation (ddof 1) across repeats of the benchmark score of each repeat,
      computed over the samples scored in every repeat (so every repeat averages the same samples); with
      `types` (one per sample), the benchmark score is the unweighted mean of type means. This is how far
      the headline number moves from judging noise alone; a difference between two models smaller than
      about twice this is within the judge's own noise.
    - `repeat_means`: that benchmark score per repeat; `n_samples` (samples with two or more scores),
      `n_complete` (samples scored in every repeat), `repeats`.
    """
    scores = np.asarray(scores_by_repeat, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"expected scores of shape (repeats, samples), got shape {scores.shape}")
    repeats, samples = scores.shape
    if repeats < 2:
        raise ValueError(f"the spread needs two or more repeats, got {repeats}")
    if types is not None and len(types) != samples:
        raise ValueError(f"{len(types)} types for {samples} samples")
    finite = np.isfinite(scores)
    enough = finite.sum(axis=0) >= 2
    per_sample = np.array([np.std(scores[finite[:, j], j], ddof=1) for j in np.flatnonzero(enough)])
    complete = finite.all(axis=0)
    repeat_means = np.full(repeats, np.nan)
    if complete.any():
        kept = scores[:, complete]
        if types is None:
            repeat_means = kept.mean(axis=1)
        else:
            labels = np.asarray(types, dtype=object)[complete]
            repeat_means = np.mean([kept[:, labels == name].mean(axis=1) for name in sorted(set(labels))], axis=0)
    return {
        "repeats": int(repeats),
        "n_samples": int(enough.sum()),
        "n_complete": int(complete.sum()),
        "per_sample_std": float(per_sample.mean()) if per_sample.size else float("nan"),
        "mean_std": float(np.std(repeat_means, ddof=1)) if complete.any() else float("nan"),
        "repeat_means": [float(value) for value in repeat_means],
    }
