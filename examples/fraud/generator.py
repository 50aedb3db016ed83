"""Synthetic card transactions with drift knobs, for the demo, the tests and the benchmark.

Everything is drawn in numpy column by column; ``generate`` returns records
ready for the ``driftline.examples.CardTransaction`` v2 schema, labels
included (the label is ground truth, not sent with the request).

Drift knobs (:class:`Drift`): shift a feature's mean by a number of its
standard deviations, scale its spread, bring in a new category, or switch the
label rule (concept drift).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CATEGORIES = ("grocery", "fuel", "restaurant", "travel", "electronics", "online_retail", "gambling", "other")
CATEGORY_P = (0.28, 0.14, 0.18, 0.06, 0.07, 0.17, 0.03, 0.07)
CHANNELS = ("pos", "contactless", "online", "atm")
CHANNEL_P = (0.35, 0.3, 0.3, 0.05)
COUNTRIES = ("DE", "FR", "NL", "ES", "IT", "GB", "US")

NUMERIC = (
    "amount", "merchant_risk", "distance_from_home_km", "distance_from_last_km",
    "ratio_to_median_amount", "hour_of_day", "tx_count_1h", "tx_count_24h",
    "account_age_days", "velocity_score", "avg_amount_7d", "device_trust", "ip_risk",
    "prior_chargebacks",
)
INTEGER = {"hour_of_day", "tx_count_1h", "tx_count_24h", "account_age_days", "prior_chargebacks"}


@dataclass(frozen=True)
class Drift:
    """What to change relative to the training distribution.

    ``shift`` moves a numeric feature's mean by that many of its standard
    deviations; ``scale`` multiplies its spread around the mean;
    ``new_category`` sends that fraction of ``merchant_category`` to an unseen
    value; ``label_rule=2`` switches to the post-drift fraud rule.
    """

    shift: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    new_category: tuple[str, float] | None = None
    label_rule: int = 1


NO_DRIFT = Drift()


def generate(
    n: int, rng: np.random.Generator, *, start_ms: int = 1_767_225_600_000, step_ms: int = 10,
    drift: Drift = NO_DRIFT,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` records and their 0/1 fraud labels."""
    cols = _columns(n, rng)
    for name, k in drift.shift.items():
        cols[name] = cols[name] + k * np.nanstd(cols[name])
    for name, k in drift.scale.items():
        mean = np.nanmean(cols[name])
        cols[name] = mean + (cols[name] - mean) * k
    for name in ("amount", "merchant_risk", "distance_from_home_km", "distance_from_last_km",
                 "ratio_to_median_amount", "tx_count_1h", "tx_count_24h", "avg_amount_7d",
                 "device_trust", "ip_risk"):
        cols[name] = np.clip(cols[name], 0, None)
    cols["merchant_risk"] = np.clip(cols["merchant_risk"], 0, 1)
    cols["device_trust"] = np.clip(cols["device_trust"], 0, 1)
    cols["ip_risk"] = np.clip(cols["ip_risk"], 0, 1)
    category = rng.choice(np.array(CATEGORIES), size=n, p=CATEGORY_P)
    if drift.new_category is not None:
        value, fraction = drift.new_category
        category = np.where(rng.random(n) < fraction, value, category)
    channel = rng.choice(np.array(CHANNELS), size=n, p=CHANNEL_P)
    country = rng.choice(np.array(COUNTRIES), size=n)
    labels = _labels(cols, category, channel, rng, drift.label_rule)

    nulls = {"avg_amount_7d": 0.08, "device_trust": 0.15, "prior_chargebacks": 0.25}
    null_masks = {k: rng.random(n) < p for k, p in nulls.items()}
    as_lists: dict[str, list[Any]] = {}
    for name in NUMERIC:
        values = cols[name]
        py: list[Any] = values.astype(np.int64).tolist() if name in INTEGER else values.tolist()
        if name in null_masks:
            for i in np.flatnonzero(null_masks[name]).tolist():
                py[i] = None
        as_lists[name] = py
    times = (start_ms + np.arange(n, dtype=np.int64) * step_ms).tolist()
    cards = rng.integers(0, 50_000, size=n).tolist()
    raw_ids = rng.bytes(16 * n)
    ids = [str(uuid.UUID(bytes=raw_ids[16 * i : 16 * i + 16], version=4)) for i in range(n)]
    cat_l, chan_l, country_l = category.tolist(), channel.tolist(), country.tolist()
    records = [
        {
            "request_id": ids[i],
            "event_time": times[i],
            "card_id": f"card-{cards[i]:05d}",
            **{name: as_lists[name][i] for name in NUMERIC},
            "merchant_category": cat_l[i],
            "channel": chan_l[i],
            "country": country_l[i],
        }
        for i in range(n)
    ]
    return records, labels


def _columns(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    amount = rng.lognormal(3.4, 1.0, n)
    return {
        "amount": amount,
        "merchant_risk": rng.beta(2, 6, n),
        "distance_from_home_km": rng.exponential(15, n),
        "distance_from_last_km": rng.exponential(8, n),
        "ratio_to_median_amount": rng.lognormal(0.0, 0.6, n),
        "hour_of_day": rng.integers(0, 24, n).astype(np.float64),
        "tx_count_1h": rng.poisson(0.6, n).astype(np.float64),
        "tx_count_24h": rng.poisson(4.0, n).astype(np.float64),
        "account_age_days": rng.integers(1, 3650, n).astype(np.float64),
        "velocity_score": rng.normal(0.0, 1.0, n),
        "avg_amount_7d": amount * rng.lognormal(0.0, 0.3, n),
        "device_trust": rng.beta(5, 2, n),
        "ip_risk": rng.beta(1, 8, n),
        "prior_chargebacks": rng.poisson(0.1, n).astype(np.float64),
    }


def _labels(cols: dict[str, np.ndarray], category: np.ndarray, channel: np.ndarray,
            rng: np.random.Generator, rule: int) -> np.ndarray:
    risky = np.isin(category, ("electronics", "gambling", "online_retail"))
    logit = (
        -6.0
        + 4.0 * cols["merchant_risk"]
        + 1.2 * np.log(cols["ratio_to_median_amount"] + 1e-3)
        + 0.05 * cols["distance_from_last_km"]
        + 0.7 * cols["tx_count_1h"]
        + 1.2 * (channel == "online")
        + 1.0 * risky
        + 2.0 * cols["ip_risk"]
        - 1.5 * cols["device_trust"]
        + 0.4 * cols["velocity_score"]
    )
    if rule == 2:
        # After the drift, fraudsters move to small in-person payments at night.
        night = (cols["hour_of_day"] < 5) | (cols["hour_of_day"] > 22)
        logit = (
            -5.0 + 2.5 * night + 1.5 * (channel == "contactless")
            - 0.8 * np.log(cols["ratio_to_median_amount"] + 1e-3) + 2.0 * cols["merchant_risk"]
        )
    return (rng.random(len(logit)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)


if __name__ == "__main__":
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(description="Write synthetic card transactions as JSON lines.")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    recs, _ = generate(a.rows, np.random.default_rng(a.seed))
    sys.stdout.write("".join(json.dumps(r) + "\n" for r in recs))
