"""The streaming layer: everything that knows about Kafka, Faust, processes and the command line.

Five rooms, each with its own rule (enforced by ``tests/unit/test_boundaries.py``):

- ``core/``: the flows' logic as functions of their inputs and the clock
  (score a batch, fold windows, close drift windows, join labels, read poison
  records, bound dead letters, readiness). No Kafka client, no Faust.
- ``kafka/``: confluent-kafka adapters: the batch source and acknowledged sink,
  topics, the control topic, the embedded broker launcher. No Faust.
- ``app/``: the worker, a Faust app with one module per flow (score,
  control, drift, feedback, web) wired around a shared context; ``rollout``
  loads the model versions the control flow applies.
- ``trainer/``: ``driftline trainer``, retrain requests to a promoted model.
  No Faust.
- ``cli/``: the ``driftline`` command, one module per command group. Imports
  the worker only inside ``driftline worker``.

Shared by all: ``settings`` (the one configuration object), ``errors``,
``catalog`` (the schema catalog a process uses), ``registry`` (a Confluent-compatible
Schema Registry as the catalog's source of ids), ``metrics`` (Prometheus),
``example`` (the bundled fraud example). The pure libraries
(``driftline.schemas``, ``driftline.inference``, ``driftline.detectors``)
never import anything from here.
"""
