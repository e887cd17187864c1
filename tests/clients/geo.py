"""Multi-region checks with python confluent-kafka (librdkafka), unmodified.

  geo.py produce BOOTSTRAP TOPIC PREFIX COUNT [TIMEOUT_MS]
      Produces COUNT records "PREFIX-i" (keyless, one partition chosen by the
      client), acks=all, no retries; prints JSON: acknowledged records
      [partition, value, offset] (offset -1 when the broker does not know it
      at ack time), errors, and each record's ack latency in ms.
  geo.py steady BOOTSTRAP TOPIC PREFIX COUNT RATE [TIMEOUT_MS]
      Produces COUNT records at RATE per second with the client's default
      retries (as an application would), acks=all; prints the same JSON as
      produce.
  geo.py consume BOOTSTRAP TOPIC PARTITIONS WANT [IDLE_MS]
      Reads every partition from offset 0 until WANT records arrived or none
      arrived for IDLE_MS; prints JSON {partition: [[offset, value, origin
      region, original record id if re-injected at failback else ""], ...]}.
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def recorder(acked, errors, lat):
    """A delivery callback factory: records each outcome and its latency."""
    def done(sent):
        def cb(err, msg):
            if err is not None:
                errors.append(str(err))
            else:
                acked.append([msg.partition(), msg.value().decode(), msg.offset() if msg.offset() is not None and msg.offset() >= 0 else -1])
                lat.append((time.time() - sent) * 1000)
        return cb
    return done


def produce(bootstrap, topic, prefix, count, timeout_ms=10000):
    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "retries": 0,
        "enable.idempotence": False,
        "request.timeout.ms": timeout_ms,
        "message.timeout.ms": timeout_ms + 2000,
    })
    acked, errors, lat = [], [], []
    done = recorder(acked, errors, lat)

    for i in range(count):
        p.produce(topic, value=f"{prefix}-{i}".encode(), on_delivery=done(time.time()))
        p.poll(0)
    p.flush(timeout_ms / 1000 + 10)
    print(json.dumps({"acked": acked, "errors": errors, "latency_ms": lat}))


def steady(bootstrap, topic, prefix, count, rate, timeout_ms=20000):
    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 0,
        "enable.idempotence": False,
        "message.timeout.ms": timeout_ms,
        "retry.backoff.ms": 100,
    })
    acked, errors, lat = [], [], []
    done = recorder(acked, errors, lat)

    start = time.time()
    for i in range(count):
        due = start + i / rate
        while time.time() < due:
            p.poll(min(0.01, max(0, due - time.time())))
        p.produce(topic, value=f"{prefix}-{i}".encode(), on_delivery=done(time.time()))
        p.poll(0)
    p.flush(timeout_ms / 1000 + 10)
    print(json.dumps({"acked": acked, "errors": errors, "latency_ms": lat}))


def consume(bootstrap, topic, partitions, want, idle_ms=15000):
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "unused",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 200,
    })
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = {str(p): [] for p in range(partitions)}
    n, last = 0, time.time()
    while n < want and (time.time() - last) * 1000 < idle_ms:
        m = c.poll(0.2)
        if m is None or m.error():
            continue
        headers = dict(m.headers() or [])
        origin = headers.get("meridian.origin", b"").decode()
        reinjected = headers.get("meridian.reinjected.from", b"").decode()
        got[str(m.partition())].append([m.offset(), m.value().decode(), origin, reinjected])
        n += 1
        last = time.time()
    c.close()
    print(json.dumps(got))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "produce":
        produce(args[0], args[1], args[2], int(args[3]), *(int(a) for a in args[4:]))
    elif cmd == "steady":
        steady(args[0], args[1], args[2], int(args[3]), float(args[4]), *(int(a) for a in args[5:]))
    else:
        consume(args[0], args[1], int(args[2]), int(args[3]), *(int(a) for a in args[4:]))
