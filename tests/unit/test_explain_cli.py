"""``driftline explain`` without a broker: the key's partition, the table, the features of a scored row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from driftline.streams.cli.explain import feature_values, murmur2, partition_of, ranked, render
from driftline.streams.settings import load_settings


@pytest.mark.parametrize(("key", "expected"), [
    (b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829), (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])
def test_murmur2_is_kafkas(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected  # the Java client's own test vectors
    assert 0 <= partition_of(key, 4) < 4


EXPLANATION = {"request_id": "r1", "model": "fraud", "model_version": "1", "variant": "champion", "score": 0.9,
               "link": "logit", "base": -1.0, "value": 2.2, "features": ["amount", "merchant_risk", "hour_of_day"],
               "attributions": [0.5, 3.0, -0.3], "method": "kernel_shap", "samples": 256, "background": 64,
               "event_time": 0}


def test_attributions_are_shown_largest_magnitude_first() -> None:
    assert [f for f, _ in ranked(EXPLANATION)] == ["merchant_risk", "amount", "hour_of_day"]
    text = render("r1", EXPLANATION, {"predicted": "fraud"}, {"amount": 120.5, "merchant_risk": 0.8,
                                                              "hour_of_day": None}, None)
    lines = text.splitlines()
    assert lines[0] == "request r1: fraud v1 (champion), score 0.9 (fraud)"
    assert "base -1.0000 + sum +3.2000 = +2.2000" in lines[1] and "log-odds" in lines[1]
    assert [ln.split()[0] for ln in lines[3:]] == ["merchant_risk", "amount", "hour_of_day"]
    assert lines[3].split()[1:] == ["0.8", "+3.0000"] and lines[5].split() == ["hour_of_day", "(missing)", "-0.3000"]
    assert "not on the scored topic" in render("r1", EXPLANATION, None, {}, None)


def test_a_scored_row_shows_its_values_or_says_why_not(tmp_path: Path) -> None:
    from driftline.inference.manifest import Manifest
    from driftline.streams.settings import EXAMPLE_MODELS

    settings = load_settings(model_dir=EXAMPLE_MODELS)
    profile = Manifest.read(EXAMPLE_MODELS / "fraud" / "1").profile
    row = np.arange(profile.width, dtype="<f4")
    scored = {"request_id": "r1", "model": "fraud", "model_version": "1", "features": row.tobytes(), "sealed": False}
    values, why = feature_values(settings, scored)
    assert why is None and values[profile.features[1].name] == 1.0 and len(values) == len(profile.features)
    values, why = feature_values(settings, {**scored, "sealed": True})
    assert values == {} and why is not None and "DRIFTLINE_PII_KEY" in why
    values, why = feature_values(settings, {**scored, "model_version": "404"})
    assert values == {} and why is not None and "not in the model registry" in why


def test_the_report_shows_importance_per_window_beside_the_reference() -> None:
    from driftline.detectors.importance import importance_shift
    from driftline.streams.cli.report import ImportanceReport, importance_windows, render

    def e(at: int, phi: list[float], model: str = "fraud") -> dict[str, object]:
        return {"model": model, "model_version": "1", "event_time": at, "features": ["a", "b", "c"],
                "attributions": phi}

    recs = [e(1_000, [1.0, -0.5, 0.0]), e(2_000, [-3.0, 0.5, 0.0]), e(61_000, [0.1, 2.0, 0.0]),
            e(5_000, [9.0, 9.0, 9.0], model="other"), e(999_000, [9.0, 9.0, 9.0])]
    windows = importance_windows(recs, "fraud", 0, 120_000, 60_000)
    assert list(windows) == ["1"] and [(s, w.n) for s, w in windows["1"]] == [(0, 2), (60_000, 1)]
    np.testing.assert_allclose(windows["1"][0][1].mean_abs, [2.0, 0.5, 0.0])
    reference = np.array([0.2, 1.0, 0.1])
    page = render("fraud", [], [], 0, 120_000, 0.01, importance=[
        ImportanceReport("1", ("a", "b", "c"), reference, windows["1"])])
    section = page.split("What the model leans on")[1]
    assert section.index("<th>b</th>") < section.index("<th>a</th>") < section.index("<th>c</th>")  # by reference
    shift = importance_shift(reference, np.array([2.0, 0.5, 0.0]))
    assert f"{shift:.3f}" in section and "reference rows" in section
    assert "What the model leans on" not in render("fraud", [], [], 0, 1, 0.01)  # no explanations: no section
