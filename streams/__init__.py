"""The composition root: Faust app, agents, Kafka clients, metrics, embedded broker, CLI.

The only package that knows about Kafka; nothing else imports it.
"""
