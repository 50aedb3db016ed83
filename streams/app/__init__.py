"""The worker: a Faust app, one module per flow (score, drift, feedback, rollout, web) around one context.

The only room that imports Faust. May import ``driftline.streams.core``,
``driftline.streams.kafka``, ``metrics`` and the pure libraries; never the
trainer or the CLI. ``supervisor`` starts N worker processes and imports no Faust.
"""
