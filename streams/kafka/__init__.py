"""Kafka adapters on confluent-kafka: batch source, acknowledged sink, topics, the control topic, the embedded broker.

May import ``driftline.streams.core``, ``settings`` and ``errors`` and the pure
libraries; never Faust, the worker, the trainer or the CLI.
"""
