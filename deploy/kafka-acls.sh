#!/usr/bin/env sh
# Kafka ACLs for a driftline namespace: workers read requests and write outputs; only the operators' and the
# trainer's principals write the control topic {ns}.models (what serves). Run once, with an admin's client
# config; needs an authorizer on the brokers (KRaft: authorizer.class.name=
# org.apache.kafka.metadata.authorizer.StandardAuthorizer). Principals are examples: use your SASL users or
# certificate subjects.
set -eu
BOOTSTRAP=${BOOTSTRAP:-kafka-bootstrap.kafka.svc:9093}
ADMIN_CONFIG=${ADMIN_CONFIG:-admin.properties}
NS=${NS:-driftline}
WORKER=${WORKER:-User:driftline-worker}
TRAINER=${TRAINER:-User:driftline-trainer}
OPERATOR=${OPERATOR:-User:driftline-operator}
acl() { kafka-acls.sh --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN_CONFIG" --add "$@"; }

# Workers: read every driftline topic (prefix), write the outputs and their own state, but not {ns}.models.
acl --allow-principal "$WORKER" --operation Read --operation Describe --topic "$NS." --resource-pattern-type prefixed
for t in predictions predictions.shadow deadletter sketches alerts retrain labeled scored drift-state \
         feedback-state; do
  acl --allow-principal "$WORKER" --operation Write --operation Describe --topic "$NS.$t"
done
acl --allow-principal "$WORKER" --operation Read --group "$NS-" --resource-pattern-type prefixed
acl --allow-principal "$WORKER" --operation Write --operation Describe --transactional-id "$NS-score-" \
    --resource-pattern-type prefixed  # exactly_once only
# The trainer: reads labeled and retrain, writes retrain events and deployments.
acl --allow-principal "$TRAINER" --operation Read --operation Describe --topic "$NS." --resource-pattern-type prefixed
acl --allow-principal "$TRAINER" --operation Write --topic "$NS.retrain" --topic "$NS.models"
acl --allow-principal "$TRAINER" --operation Read --group "$NS-trainer" --resource-pattern-type prefixed
# Operators (driftline model promote/canary/shadow/ab/rollback): the control topic.
acl --allow-principal "$OPERATOR" --operation Read --operation Write --operation Describe --topic "$NS.models"
