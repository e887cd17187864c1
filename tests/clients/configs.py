"""Kafka's topic configs through python confluent-kafka's AdminClient.

Usage: configs.py BOOTSTRAP
Creates topics as frameworks do (a Kafka Streams repartition topic's
configs), tries configs Meridian refuses, reads configs back with
DescribeConfigs, and replaces them with the older AlterConfigs API (what
`AdminClient.alter_configs`, kafkajs, sarama and aiokafka send). Prints one
JSON line: what each step answered.
"""
import json
import sys

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

bootstrap = sys.argv[1]
admin = AdminClient({"bootstrap.servers": bootstrap})
report = {}


def outcome(future):
    """None when the call succeeded, else [error name, message]."""
    try:
        future.result(timeout=30)
        return None
    except KafkaException as e:
        err = e.args[0]
        return [err.name(), err.str()]


def create(name, config):
    f = admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=-1, config=config)])
    return outcome(f[name])


def describe(name):
    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    entries = admin.describe_configs([res])[res].result(timeout=30)
    return {k: [e.value, e.is_default] for k, e in entries.items()}


# A Kafka Streams repartition topic, as Streams creates it.
report["create_streams"] = create("app-repartition", {
    "cleanup.policy": "delete",
    "segment.bytes": "52428800",
    "retention.ms": "-1",
    "message.timestamp.type": "CreateTime",
    "min.insync.replicas": "2",
    "unclean.leader.election.enable": "false",
    "meridian.rpo.max.ms": "5000",
})
report["create_bad_segment"] = create("bad-segment", {"segment.bytes": "13"})
report["create_unclean"] = create("bad-unclean", {"unclean.leader.election.enable": "true"})
report["create_unknown"] = create("bad-unknown", {"no.such.config": "1"})
report["described"] = describe("app-repartition")

# The older API: what is given replaces every other config.
res = ConfigResource(ConfigResource.Type.TOPIC, "app-repartition",
                     set_config={"max.message.bytes": "100000", "flush.ms": "1000"})
report["alter"] = outcome(admin.alter_configs([res])[res])
report["after_alter"] = describe("app-repartition")
bad = ConfigResource(ConfigResource.Type.TOPIC, "app-repartition",
                     set_config={"segment.ms": "0"})
report["alter_bad"] = outcome(admin.alter_configs([bad])[bad])
missing = ConfigResource(ConfigResource.Type.TOPIC, "no-such-topic",
                         set_config={"flush.ms": "1000"})
report["alter_missing"] = outcome(admin.alter_configs([missing])[missing])
report["after_bad"] = describe("app-repartition")

print(json.dumps(report))
