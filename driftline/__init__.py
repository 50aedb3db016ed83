"""driftline: a streaming data plane for ML models in production.

The four parts live in the repository's top-level folders and install as
sub-packages of this one, so no generic top-level name (``inference``,
``schemas``) collides with another distribution:

- :mod:`driftline.schemas`: Avro schemas, the catalog, encode and decode.
- :mod:`driftline.inference`: ONNX models, the registry, deployments.
- :mod:`driftline.detectors`: drift and quality statistics and policies.
- :mod:`driftline.streams`: Kafka, the worker, the trainer and the CLI.

In a checkout the four names here are symbolic links to those folders; the
wheel maps them with setuptools' ``package-dir``.
"""
