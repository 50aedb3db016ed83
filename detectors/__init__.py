"""Drift and quality statistics over windows of live data.

Pure library: numpy and River only, no Kafka, no global state. The windowed
drift statistics, detectors and alert policy arrive with the drift issue
(#3); the score path does not depend on them yet.
"""

__all__: list[str] = []
