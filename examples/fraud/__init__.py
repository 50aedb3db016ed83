"""The fraud example's generator (``python -m driftline.examples.fraud.generator``) and training script."""
