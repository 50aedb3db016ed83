"""The worker: a Faust app, one module per flow (score, control, drift, feedback, web) around one context.

The only room that imports Faust. May import ``driftline.streams.core``,
``driftline.streams.kafka``, ``metrics`` and the pure libraries; never the
trainer or the CLI. ``rollout`` loads the model versions the control flow applies;
``supervisor`` starts N worker processes and imports no Faust.
"""
