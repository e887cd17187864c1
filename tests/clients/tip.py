"""A consumer at the tip of a partition, across a leader change.

Usage: tip.py BOOTSTRAP TOPIC GROUP READY_FILE SECONDS
Subscribes with a new group and auto.offset.reset=latest (an application
that wants only new records), and creates READY_FILE once it has read its
first record (it then holds a position at the tip). Reads for SECONDS and
prints JSON: the values read, and errors librdkafka reported. A broker
that answers OFFSET_OUT_OF_RANGE for the tip makes librdkafka reset to the
latest offset, silently skipping records: they are missing from "values".
"""
import json
import sys
import time

from confluent_kafka import Consumer

bootstrap, topic, group, ready, seconds = sys.argv[1:6]
c = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "auto.offset.reset": "latest",
    "enable.auto.commit": False,
})
c.subscribe([topic])
values, errors = [], []
deadline = time.time() + float(seconds)
while time.time() < deadline:
    m = c.poll(0.2)
    if m is None:
        continue
    if m.error():
        errors.append(str(m.error()))
        continue
    if not values:
        open(ready, "w").write("ready\n")
    values.append(m.value().decode())
c.close()
print(json.dumps({"values": values, "errors": errors}))
