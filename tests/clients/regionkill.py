"""A whole region SIGKILLed under idempotent producers in every region
(issue 16, item 10, third finding), with python confluent-kafka
(librdkafka) at its default settings plus enable.idempotence=true.

  regionkill.py BOOTSTRAPS_JSON VICTIM PIDS_JSON TOPIC PARTITIONS RATE SECONDS KILL_AFTER IDLE_MS

BOOTSTRAPS_JSON maps each region to its bootstrap. One producer per region
writes "REGION-i" at RATE records/s for SECONDS into TOPIC (the client
picks partitions) through its region's brokers; after KILL_AFTER seconds
every pid of PIDS_JSON (the nodes of region VICTIM) is SIGKILLed. Then
each surviving region's view is read from offset 0 until IDLE_MS pass
without a record. Prints JSON: per producer how many it wrote and had
acknowledged, its delivery errors and fatal error (first 3); per
surviving region how many records it read, the values read more than once
(count, first 5), the acknowledged values it lacks (count, first 5, how
many of them VICTIM's producer wrote, and how many were acknowledged more
than half a second after the kill: those no lost region's tail explains;
any producer may have written through VICTIM's brokers),
and whether the views agree.
"""
import collections
import json
import os
import signal
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


def writer(region, bootstrap, topic, rate, seconds, out):
    fatal = []
    acked, errors = [], []

    def on_error(err):
        if err.fatal():
            fatal.append(str(err))

    def cb(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            acked.append((msg.value().decode(), time.time()))

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                  "error_cb": on_error})
    start = time.time()
    i = 0
    try:
        while time.time() - start < seconds:
            due = start + i / rate
            while time.time() < due:
                p.poll(min(0.005, max(0, due - time.time())))
            try:
                p.produce(topic, value=f"{region}-{i}".encode(), on_delivery=cb)
            except BufferError:
                p.poll(0.1)
                continue
            p.poll(0)
            i += 1
        p.flush(60)
    except KafkaException as e:
        fatal.append(str(e))
    out[region] = {"written": i, "acked": acked, "errors": errors, "fatal": fatal}


def read_view(bootstrap, topic, partitions, idle_ms):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "regionkill-reader",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    vals = []
    last = time.time()
    while (time.time() - last) * 1000 < idle_ms:
        m = c.poll(0.2)
        if m is None or m.error():
            continue
        last = time.time()
        vals.append((m.partition(), m.offset(), m.value().decode()))
    c.close()
    return vals


def main(boots, victim, pids, topic, partitions, rate, seconds, kill_after, idle_ms):
    out = {}
    threads = [threading.Thread(target=writer, args=(r, b, topic, rate, seconds, out))
               for r, b in boots.items()]
    for t in threads:
        t.start()
    time.sleep(kill_after)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    for t in threads:
        t.join()
    acked = [v for w in out.values() for v, _ in w["acked"]]
    late = {v for w in out.values() for v, at in w["acked"] if at > killed_at + 0.5}
    views, orders = {}, {}
    for r, b in boots.items():
        if r == victim:
            continue
        vals = read_view(b, topic, partitions, idle_ms)
        count = collections.Counter(v for _, _, v in vals)
        dups = sorted(v for v, n in count.items() if n > 1)
        missing = [v for v in acked if v not in count]
        views[r] = {"read": len(vals), "dups": len(dups), "dup_examples": dups[:5],
                    "missing": len(missing), "missing_examples": missing[:5],
                    "missing_of_victim": sum(1 for v in missing if v.startswith(victim + "-")),
                    "missing_acked_after_kill": sum(1 for v in missing if v in late)}
        orders[r] = sorted(vals)
    agree = len({json.dumps(o) for o in orders.values()}) <= 1
    print(json.dumps({
        "producers": {r: {"written": w["written"], "acked": len(w["acked"]),
                          "errors": w["errors"][:3], "fatal": w["fatal"][:3]}
                      for r, w in out.items()},
        "views": views, "views_agree": agree}))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(json.loads(a[0]), a[1], json.loads(a[2]), a[3], int(a[4]), int(a[5]),
         float(a[6]), float(a[7]), int(a[8]))
