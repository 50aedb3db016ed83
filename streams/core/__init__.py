"""The flows' logic, pure: the worker, the trainer and the CLI call these with messages, rows and the clock.

May import ``driftline.schemas``, ``driftline.inference``, ``driftline.detectors``
and ``driftline.streams.{settings,errors}``; never a Kafka client, Faust,
Prometheus, or the other rooms of ``driftline.streams``. What it reads from
disk it reads through the model registry (profiles, manifests).
"""
