"""Idempotent producer checks with python confluent-kafka (librdkafka), unmodified.

  idempotent.py produce BOOTSTRAP TOPIC PREFIX WAVES [CONF_JSON]
      One producer with enable.idempotence=true sends records PREFIX0,
      PREFIX1, ... (key = value) in waves: WAVES is a comma-separated list
      of counts, and each wave is sent at once and flushed before the next.
      CONF_JSON adds or overrides librdkafka settings. Prints JSON
      {"delivered": [value, ...], "failed": [[value, error], ...],
       "fatal": error or null}.
  idempotent.py read BOOTSTRAP TOPIC PARTITIONS WANT [IDLE_MS]
      Reads every partition from the beginning, without a group, until WANT
      records arrived or none for IDLE_MS; prints JSON {"values": [...]}.
"""
import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition


def produce(bootstrap, topic, prefix, waves, extra):
    fatal = []

    def on_error(err):
        if err.fatal():
            fatal.append(str(err))

    conf = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "message.timeout.ms": 120000,
        "retry.backoff.ms": 200,
        "topic.metadata.refresh.interval.ms": 1000,
        "error_cb": on_error,
    }
    conf.update(extra)
    p = Producer(conf)
    delivered, failed = [], []

    def cb(err, msg):
        v = msg.value().decode()
        if err is None:
            delivered.append(v)
        else:
            failed.append([v, str(err)])

    n = 0
    for count in waves:
        for _ in range(count):
            v = f"{prefix}{n}"
            n += 1
            p.produce(topic, key=v, value=v, on_delivery=cb)
        deadline = time.time() + 150
        while len(delivered) + len(failed) < n and not fatal and time.time() < deadline:
            p.poll(0.1)
    print(json.dumps({"delivered": delivered, "failed": failed,
                      "fatal": fatal[0] if fatal else None}))


def read(bootstrap, topic, partitions, want, idle_ms=10000):
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "unused",
        "enable.auto.commit": False,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values = []
    last = time.time()
    while len(values) < want and (time.time() - last) * 1000 < idle_ms:
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            if m.error().code() != KafkaError._PARTITION_EOF:
                print(f"consume error: {m.error()}", file=sys.stderr)
            continue
        values.append(m.value().decode())
        last = time.time()
    c.close()
    print(json.dumps({"values": values}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "produce":
        extra = json.loads(args[4]) if len(args) > 4 else {}
        produce(args[0], args[1], args[2], [int(w) for w in args[3].split(",")], extra)
    elif cmd == "read":
        read(args[0], args[1], int(args[2]), int(args[3]),
             int(args[4]) if len(args) > 4 else 10000)
    else:
        sys.exit(f"unknown command {cmd}")
