"""``driftline trainer``: retrain requests in, a better model in production out.

May import ``driftline.streams.core``, ``driftline.streams.kafka`` and the pure
libraries; never Faust, the worker or the CLI.
"""
