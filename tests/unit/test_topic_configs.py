"""Existing topics whose configs differ from driftline's: a state topic that is not compacted loses state."""

from __future__ import annotations

from driftline.streams.kafka.topics import config_mismatches
from driftline.streams.settings import load_settings


def test_a_state_topic_that_is_not_compacted_is_named_with_the_fix() -> None:
    configs = load_settings(namespace="ns").topic_configs()
    wanted = {t: c for t, c in configs.items() if c["cleanup.policy"] == "compact"}
    assert set(wanted) == {"ns.models", "ns.drift-state", "ns.feedback-state"}
    reported: dict[str, dict[str, str | None]] = {
        "ns.models": {"cleanup.policy": "delete", "retention.ms": "604800000"},  # made before it was compacted
        "ns.drift-state": {"cleanup.policy": "compact,delete"},  # retention would remove state still in use
        "ns.feedback-state": {"cleanup.policy": "compact"},
    }
    problems = config_mismatches(wanted, reported)
    assert len(problems) == 2
    assert problems[0].startswith("topic ns.models has cleanup.policy=delete, not compact")
    assert "retention.ms" in problems[0]
    assert problems[0].endswith("--entity-name ns.models --add-config cleanup.policy=compact")
    assert problems[1].startswith("topic ns.drift-state has cleanup.policy=compact,delete, not compact")


def test_configs_the_broker_does_not_report_are_not_judged() -> None:
    wanted = {"ns.models": {"cleanup.policy": "compact"}}
    assert config_mismatches(wanted, {}) == []  # the topic's configs could not be read
    assert config_mismatches(wanted, {"ns.models": {}}) == []  # the embedded broker: only those it was made with
    assert config_mismatches(wanted, {"ns.models": {"cleanup.policy": None}}) == []
    assert config_mismatches(wanted, {"ns.models": {"cleanup.policy": "compact"}}) == []


def test_every_other_topic_keeps_its_documented_retention() -> None:
    settings = load_settings(namespace="ns", retention_days={"requests": 3})
    configs = settings.topic_configs()
    assert set(configs) == set(settings.topic_partitions())  # every topic driftline creates has its policy
    days = {t: int(c["retention.ms"]) / 86_400_000 for t, c in configs.items() if c["cleanup.policy"] == "delete"}
    assert days == {"ns.requests": 3, "ns.predictions": 7, "ns.predictions.shadow": 7, "ns.deadletter": 14,
                    "ns.sketches": 1, "ns.alerts": 90, "ns.retrain": 90, "ns.feedback": 7, "ns.labeled": 30,
                    "ns.scored": 3, "ns.explanations": 7}
