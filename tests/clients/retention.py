"""Retention and DeleteRecords through python confluent-kafka, in every region.

Usage: retention.py TOPIC BOOTSTRAP_A BOOTSTRAP_B BOOTSTRAP_C
The topic exists with 2 partitions. Writes 40 records in region A, then
sets retention.ms=1000 and waits until every region's low watermark
(`get_watermark_offsets`) reaches its high watermark; turns retention off,
writes 10 more in region B, and reads from earliest in region C (a new
group, auto.offset.reset=earliest). Then deletes records with
`AdminClient.delete_records` in region C and reads again in region A.
Prints one JSON line of what it saw; exits 1 if a wait ran out.
"""
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

topic = sys.argv[1]
regions = sys.argv[2:5]
report = {}


def watermarks(bootstrap):
    """(low, high) of both partitions as one region's leaders answer."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm-" + uuid.uuid4().hex})
    try:
        return [list(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)) for p in (0, 1)]
    finally:
        c.close()


def wait_for(what, check, limit=90):
    """Polls every region's watermarks until `check` holds for all."""
    deadline = time.time() + limit
    last = None
    while time.time() < deadline:
        try:
            last = [watermarks(b) for b in regions]
            if all(check(w) for w in last):
                return last
        except KafkaException as e:
            last = str(e)
        time.sleep(0.5)
    print(json.dumps({"timeout": what, "last": last, "report": report}))
    sys.exit(1)


def produce(bootstrap, prefix, n):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for i in range(n):
        p.produce(topic, key=f"k{i}", value=f"{prefix}{i}")
    left = p.flush(60)
    assert left == 0, f"{left} records not delivered"


def alter(bootstrap, key, value):
    """Sets a topic config, then waits until every region describes it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(timeout=30)
    deadline = time.time() + 30
    for b in regions:
        a = AdminClient({"bootstrap.servers": b})
        while True:
            r = ConfigResource(ConfigResource.Type.TOPIC, topic)
            if a.describe_configs([r])[r].result(timeout=30)[key].value == value:
                break
            assert time.time() < deadline, f"{key}={value} not seen in {b}"
            time.sleep(0.2)


def consume_all(bootstrap, expect):
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "from-earliest-" + uuid.uuid4().hex,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    c.subscribe([topic])
    seen = []
    deadline = time.time() + 60
    while len(seen) < expect and time.time() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        seen.append([m.partition(), m.offset(), m.value().decode()])
    # Anything more that would arrive.
    end = time.time() + 2
    while time.time() < end:
        m = c.poll(0.2)
        if m is not None and not m.error():
            seen.append([m.partition(), m.offset(), m.value().decode()])
    c.close()
    return seen


def total_high(w):
    return w[0][1] + w[1][1]


produce(regions[0], "a-", 40)
wait_for("40 records in every region", lambda w: total_high(w) == 40)

# Everything older than a second goes, in every region.
alter(regions[0], "retention.ms", "1000")
expired = wait_for(
    "retention to empty every region",
    lambda w: total_high(w) == 40 and all(lo == hi for lo, hi in w),
)
report["expired"] = expired

alter(regions[0], "retention.ms", "-1")
produce(regions[1], "b-", 10)
wait_for("10 more records in every region", lambda w: total_high(w) == 50)
report["after_retention"] = consume_all(regions[2], 10)

# DeleteRecords in region C: the first two of partition 0's new records,
# and an offset past the high watermark of partition 1.
low0, high0 = watermarks(regions[2])[0]
high1 = watermarks(regions[2])[1][1]
admin = AdminClient({"bootstrap.servers": regions[2]})
futures = admin.delete_records([
    TopicPartition(topic, 0, low0 + 2),
    TopicPartition(topic, 1, high1 + 5),
])
report["delete_records"] = {}
for tp, f in futures.items():
    try:
        r = f.result(timeout=30)
        report["delete_records"][str(tp.partition)] = ["ok", r.low_watermark]
    except KafkaException as e:
        report["delete_records"][str(tp.partition)] = ["error", e.args[0].name()]
report["p0_before_delete"] = [low0, high0]
report["deleted"] = wait_for(
    "DeleteRecords in every region", lambda w: w[0][0] == low0 + 2
)
report["after_delete"] = consume_all(regions[0], 8)
print(json.dumps(report))
