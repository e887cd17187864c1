"""A node killed under load (issue 16, item 10, first finding), with python
confluent-kafka (librdkafka) at its default settings.

  nodekill.py BOOTSTRAP READ_BOOTSTRAP TOPIC RATE SECONDS KILL_AFTER PID IDLE_MS

Produces "r-i" at RATE records/s for SECONDS into TOPIC/0 through BOOTSTRAP
(acks=all, the client's default retries), SIGKILLs PID after KILL_AFTER
seconds, then reads TOPIC/0 from offset 0 through READ_BOOTSTRAP until every
acknowledged record arrived or none arrived for IDLE_MS. Prints JSON:
how many were acknowledged and read, delivery errors, the acknowledged values
not read (the first 20) and their count, the longest gap between two records arriving at the reader, how long the
reader took after the last acknowledgement, and librdkafka's error log
lines that name a cluster id.
"""
import json
import os
import signal
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def main(bootstrap, read_bootstrap, topic, rate, seconds, kill_after, pid, idle_ms):
    logs = []

    # A logger object that librdkafka's python binding accepts.
    import logging

    class Catch(logging.Handler):
        def emit(self, record):
            line = record.getMessage()
            if "ClusterId" in line or "cluster" in line.lower():
                logs.append(line)

    logger = logging.getLogger("nodekill")
    logger.addHandler(Catch())
    logger.setLevel(logging.INFO)

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5}, logger=logger)
    acked, errors = [], []

    def cb(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            acked.append(msg.value().decode())

    start = time.time()
    killed = False
    i = 0
    while time.time() - start < seconds:
        due = start + i / rate
        while time.time() < due:
            p.poll(min(0.005, max(0, due - time.time())))
        if not killed and time.time() - start >= kill_after:
            os.kill(pid, signal.SIGKILL)
            killed = True
        p.produce(topic, value=f"r-{i}".encode(), partition=0, on_delivery=cb)
        p.poll(0)
        i += 1
    p.flush(60)
    last_ack = time.time()

    c = Consumer({
        "bootstrap.servers": read_bootstrap,
        "group.id": "nodekill-reader",
        "enable.auto.commit": False,
    }, logger=logger)
    c.assign([TopicPartition(topic, 0, 0)])
    want = set(acked)
    read, seen = [], set()
    gap, prev, t = 0.0, time.time(), time.time()
    while want - seen and (time.time() - prev) * 1000 < idle_ms:
        m = c.poll(0.1)
        if m is None or m.error():
            continue
        now = time.time()
        gap = max(gap, now - prev)
        prev = now
        v = m.value().decode()
        read.append([m.offset(), v])
        seen.add(v)
    c.close()
    missing = [v for v in acked if v not in seen]
    # Counts and samples only: the whole lists would overflow the pipe the
    # test reads after the script ends.
    print(json.dumps({
        "sent": i,
        "acked": len(acked),
        "errors": errors[:20],
        "error_count": len(errors),
        "read": len(read),
        "missing": missing[:20],
        "missing_count": len(missing),
        "max_gap_s": gap,
        "read_s": time.time() - last_ack,
        "cluster_logs": logs[:10],
    }))

if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], float(a[3]), float(a[4]), float(a[5]), int(a[6]), int(a[7]))
