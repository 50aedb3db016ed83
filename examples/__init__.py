"""The bundled example, installed as ``driftline.examples``: a card-fraud model and its traffic.

``models/`` is a model registry (``fraud/1``: ONNX file, manifest, reference
profile), ``fraud/generator.py`` the synthetic transactions (with drift knobs)
and ``fraud/train.py`` how the model was trained. Its request schema,
``driftline.examples.CardTransaction``, is built in (``driftline/schemas/avro``).
``driftline up`` runs on it; ``driftline example DIR`` writes it out.
"""
