"""Drift and quality statistics over windows of live data.

Pure library: numpy and River, no Kafka, no global state. A :class:`ReferenceProfile` bins the training data; a
:class:`WindowSketch` bins a window of live data the same way and merges
with ``+`` across partitions and workers; :func:`evaluate` computes each
column's calibrated test against the reference; :class:`AlertPolicy` turns
windows of results into alerts (hysteresis, cooldown, severity) and retrain
requests; :class:`SignalDetector` wraps River's ADWIN, KSWIN and
PageHinkley, or :class:`~driftline.detectors.bocpd.Bocpd` (Bayesian online
change points), over each column's per-window signal;
:mod:`~driftline.detectors.changepoints` scores them on streams with known
change points.
"""

from driftline.detectors.evaluate import SCORE, ColumnResult, dead_letter_result, evaluate
from driftline.detectors.policy import AlertDecision, AlertPolicy, PolicyConfig, RetrainDecision
from driftline.detectors.profile import CategoricalReference, NumericReference, ReferenceProfile
from driftline.detectors.river_signal import SignalDetector
from driftline.detectors.sketch import ColumnSketch, WindowSketch, window_bounds
from driftline.detectors.stats import chi2_counts, chi2_isf, chi2_sf, kolmogorov_sf, ks_counts, psi, psi_threshold

__all__ = [
    "SCORE",
    "AlertDecision",
    "AlertPolicy",
    "CategoricalReference",
    "ColumnResult",
    "ColumnSketch",
    "NumericReference",
    "PolicyConfig",
    "ReferenceProfile",
    "RetrainDecision",
    "SignalDetector",
    "WindowSketch",
    "chi2_counts",
    "chi2_isf",
    "chi2_sf",
    "dead_letter_result",
    "evaluate",
    "kolmogorov_sf",
    "ks_counts",
    "psi",
    "psi_threshold",
    "window_bounds",
]
