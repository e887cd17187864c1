"""Produce and consume with python confluent-kafka (librdkafka), unmodified.

Usage: confluent_roundtrip.py BOOTSTRAP TOPIC COUNT
Produces COUNT records with each default codec (none, gzip, snappy, lz4,
zstd) and acks=all, then reads the topic back with an assigned consumer and
prints one JSON line: what was acknowledged and what was read.
"""
import json
import sys

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])

admin = AdminClient({"bootstrap.servers": bootstrap})
futures = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=-1)])
futures[topic].result(timeout=30)

acked = []
errors = []


def on_delivery(err, msg):
    if err is not None:
        errors.append(str(err))
    else:
        acked.append([msg.partition(), msg.offset(), msg.value().decode()])


for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "compression.type": codec,
        "linger.ms": 5,
    })
    for i in range(count):
        p.produce(topic, value=f"{codec}-{i}".encode(), key=f"k{i % 7}".encode(), on_delivery=on_delivery)
        p.poll(0)
    left = p.flush(30)
    if left:
        errors.append(f"{left} messages not delivered with {codec}")

c = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "roundtrip",
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
})
c.assign([TopicPartition(topic, p, 0) for p in range(3)])
read = []
headers_ok = True
idle = 0
while len(read) < len(acked) and idle < 20:
    msg = c.poll(0.5)
    if msg is None:
        idle += 1
        continue
    if msg.error():
        errors.append(str(msg.error()))
        continue
    idle = 0
    hdrs = dict(msg.headers() or [])
    if "meridian.origin" not in hdrs or "meridian.hlc" not in hdrs:
        headers_ok = False
    read.append([msg.partition(), msg.offset(), msg.value().decode()])
c.close()
print(json.dumps({"acked": acked, "read": read, "errors": errors, "headers_ok": headers_ok}))
