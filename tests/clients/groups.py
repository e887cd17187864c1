"""Consumer group checks with python confluent-kafka (librdkafka), unmodified.

  groups.py share BOOTSTRAP TOPIC GROUP STRATEGY MEMBERS FIRST SECOND [TIMEOUT_MS]
      Produces FIRST records, runs MEMBERS consumers of GROUP (assignor
      STRATEGY: range, roundrobin or cooperative-sticky) until they
      consumed them all, closes the first member (it leaves the group),
      produces SECOND more and lets the others consume them. Each member
      commits synchronously after every message and when partitions are
      revoked. Prints JSON: each member's consumed values, the partitions
      it held after each change of its assignment and once the group
      settled after the first left, and the values whose commit failed.
  groups.py steady BOOTSTRAP TOPIC GROUP MEMBERS WANT [TIMEOUT_MS]
      Runs MEMBERS consumers of GROUP until they consumed WANT records
      (produced by someone else meanwhile); prints the same JSON as share.
  groups.py span BOOTSTRAP OTHER TOPIC GROUP RATE BEFORE_S AFTER_S [TIMEOUT_MS]
      Writes "v-i" at RATE records/s into TOPIC through BOOTSTRAP while
      two members of GROUP read it through BOOTSTRAP; BEFORE_S seconds
      after both hold partitions, a third member joins GROUP through OTHER
      (another region's brokers); AFTER_S seconds later the writing stops.
      Once every record written was read, prints the share JSON (the
      third member last) with "written": how many records were written.
  groups.py consume BOOTSTRAP TOPIC GROUP WANT [IDLE_MS]
      One member of GROUP consumes until WANT records arrived or none for
      IDLE_MS, committing each synchronously, then closes; prints JSON
      {"values": [[partition, offset, value], ...]}.
  groups.py admin BOOTSTRAP TOPIC GROUP PARTITIONS
      With the AdminClient: lists groups, describes GROUP, deletes it, and
      reads its commits again; prints JSON {"listed": [[group, state]],
      "described": {"state", "members"}, "deleted": error or null,
      "committed_after": {partition: offset or -1}}.
  groups.py committed BOOTSTRAP TOPIC GROUP PARTITIONS
      Prints JSON {partition: committed offset or -1} as the region of
      BOOTSTRAP has them.
  groups.py metadata BOOTSTRAP TOPIC GROUP BYTES
      Commits offset 1 of partition 0 for GROUP with BYTES of metadata;
      prints JSON {"error": the Kafka error's name, or null}.
"""
import json
import sys
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def consumer(bootstrap, group, strategy="range"):
    conf = {
        "partition.assignment.strategy": strategy,
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "topic.metadata.refresh.interval.ms": 1000,
    }
    return Consumer(conf)


def produce(bootstrap, topic, values):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    errors = []

    def cb(err, _msg):
        if err is not None:
            errors.append(str(err))

    for v in values:
        while True:
            try:
                p.produce(topic, value=v.encode(), key=v.encode(), on_delivery=cb)
                break
            except BufferError:
                p.poll(0.1)
    p.flush(30)
    if errors:
        raise SystemExit(f"produce failed: {errors[:3]}")


class Member:
    def __init__(self, bootstrap, topic, group, idx, strategy="range"):
        self.idx = idx
        self.values = []
        self.uncommitted = []
        self.held = set()
        self.assignments = []
        self.cooperative = strategy == "cooperative-sticky"
        self.stop = threading.Event()
        self.c = consumer(bootstrap, group, strategy)
        self.c.subscribe([topic], on_assign=self.on_assign, on_revoke=self.on_revoke,
                         on_lost=self.on_revoke)
        self.t = threading.Thread(target=self.run, daemon=True)

    def on_assign(self, c, parts):
        # Eager assignors hand over the whole assignment, cooperative ones
        # what is added.
        if not self.cooperative:
            self.held = set()
        self.held |= {p.partition for p in parts}
        self.assignments.append(sorted(self.held))

    def on_revoke(self, c, parts):
        self.held -= {p.partition for p in parts}
        self.assignments.append(sorted(self.held))

    def run(self):
        while not self.stop.is_set():
            m = self.c.poll(0.2)
            if m is None or m.error():
                continue
            v = m.value().decode()
            self.values.append(v)
            # At-least-once made exactly-once for the test: commit before
            # the next record, so a rebalance hands over at this point. A
            # commit that fails (the coordinator moved) is retried while
            # this member still holds the partition.
            for _ in range(20):
                try:
                    self.c.commit(message=m, asynchronous=False)
                    break
                except Exception:
                    if m.partition() not in self.held:
                        self.uncommitted.append(v)
                        break
                    time.sleep(0.25)
            else:
                self.uncommitted.append(v)

    def close(self):
        self.stop.set()
        self.t.join()
        self.c.close()


def wait_for(members, want, deadline):
    while time.time() < deadline:
        if sum(len(m.values) for m in members) >= want:
            return
        time.sleep(0.1)
    got = sum(len(m.values) for m in members)
    raise SystemExit(f"consumed {got} of {want} records before the deadline")


def report(members, settled=None):
    print(json.dumps([{"values": m.values, "assignments": m.assignments,
                       "uncommitted": m.uncommitted,
                       "settled": settled[i] if settled else None}
                      for i, m in enumerate(members)]))


def share(bootstrap, topic, group, strategy, n, first, second, timeout_ms=90000):
    deadline = time.time() + timeout_ms / 1000
    produce(bootstrap, topic, [f"first-{i}" for i in range(first)])
    probe = Producer({"bootstrap.servers": bootstrap})
    total = len(probe.list_topics(topic, timeout=10).topics[topic].partitions)
    members = [Member(bootstrap, topic, group, i, strategy) for i in range(n)]
    for m in members:
        m.t.start()
    wait_for(members, first, deadline)
    # Every member must hold partitions before the first one leaves.
    while time.time() < deadline and not all(m.assignments and m.assignments[-1] for m in members):
        time.sleep(0.1)
    members[0].close()
    produce(bootstrap, topic, [f"second-{i}" for i in range(second)])
    wait_for(members, first + second, deadline)
    time.sleep(1.0)  # a duplicate would arrive now
    # Let the group settle: the members left must hold every partition.
    while time.time() < deadline and sum(len(m.held) for m in members[1:]) < total:
        time.sleep(0.1)
    settled = [sorted(m.held) for m in members]
    for m in members[1:]:
        m.close()
    report(members, settled)


def span(bootstrap, other, topic, group, rate, before_s, after_s, timeout_ms=120000):
    deadline = time.time() + timeout_ms / 1000
    probe = Producer({"bootstrap.servers": bootstrap})
    total = len(probe.list_topics(topic, timeout=10).topics[topic].partitions)
    stop = threading.Event()
    written = [0]

    def write():
        p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
        start = time.time()
        while not stop.is_set():
            due = start + written[0] / rate
            if time.time() < due:
                time.sleep(min(0.01, due - time.time()))
                continue
            v = f"v-{written[0]}"
            p.produce(topic, value=v.encode(), key=v.encode())
            p.poll(0)
            written[0] += 1
        if p.flush(30) != 0:
            raise SystemExit("records left unacknowledged")

    w = threading.Thread(target=write, daemon=True)
    w.start()
    members = [Member(bootstrap, topic, group, i) for i in range(2)]
    for m in members:
        m.t.start()
    while time.time() < deadline and not all(m.assignments and m.assignments[-1] for m in members):
        time.sleep(0.1)
    time.sleep(before_s)
    far = Member(other, topic, group, 2)
    far.t.start()
    members.append(far)
    time.sleep(after_s)
    stop.set()
    w.join()
    wait_for(members, written[0], deadline)
    time.sleep(1.0)  # a duplicate would arrive now
    settled = [sorted(m.held) for m in members]
    for m in members:
        m.close()
    print(json.dumps({"written": written[0], "total": total, "members": [
        {"values": m.values, "assignments": m.assignments, "uncommitted": m.uncommitted,
         "settled": settled[i]} for i, m in enumerate(members)]}))


def steady(bootstrap, topic, group, n, want, timeout_ms=120000):
    deadline = time.time() + timeout_ms / 1000
    members = [Member(bootstrap, topic, group, i) for i in range(n)]
    for m in members:
        m.t.start()
    wait_for(members, want, deadline)
    time.sleep(1.0)  # a duplicate would arrive now
    for m in members:
        m.close()
    report(members)


def consume(bootstrap, topic, group, want, idle_ms=8000):
    c = consumer(bootstrap, group)
    c.subscribe([topic])
    out = []
    last = time.time()
    while len(out) < want and (time.time() - last) * 1000 < idle_ms:
        m = c.poll(0.2)
        if m is None or m.error():
            continue
        last = time.time()
        out.append([m.partition(), m.offset(), m.value().decode()])
        c.commit(message=m, asynchronous=False)
    c.close()
    print(json.dumps({"values": out}))


def committed(bootstrap, topic, group, partitions):
    c = consumer(bootstrap, group)
    got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=20)
    c.close()
    print(json.dumps({str(tp.partition): (tp.offset if tp.offset >= 0 else -1) for tp in got}))


def metadata(bootstrap, topic, group, size):
    from confluent_kafka import KafkaException
    c = consumer(bootstrap, group)
    error = None
    try:
        got = c.commit(offsets=[TopicPartition(topic, 0, 1, metadata="m" * size)],
                       asynchronous=False)
        error = next((tp.error.name() for tp in got if tp.error), None)
    except KafkaException as e:
        error = e.args[0].name()
    c.close()
    print(json.dumps({"error": error}))


def admin(bootstrap, topic, group, partitions):
    from confluent_kafka.admin import AdminClient
    a = AdminClient({"bootstrap.servers": bootstrap})
    listed = a.list_consumer_groups(request_timeout=20).result()
    d = a.describe_consumer_groups([group], request_timeout=20)[group].result()
    deleted = None
    try:
        a.delete_consumer_groups([group], request_timeout=20)[group].result()
    except Exception as e:  # reported, the test decides
        deleted = str(e)
    c = consumer(bootstrap, group)
    got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=20)
    c.close()
    print(json.dumps({
        "listed": sorted([g.group_id, str(g.state).split(".")[-1]] for g in listed.valid),
        "described": {"state": str(d.state).split(".")[-1], "members": len(d.members)},
        "deleted": deleted,
        "committed_after": {str(tp.partition): (tp.offset if tp.offset >= 0 else -1) for tp in got},
    }))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "share":
        b, t, g, strategy = args[:4]
        share(b, t, g, strategy, *map(int, args[4:]))
    elif cmd == "steady":
        b, t, g = args[:3]
        steady(b, t, g, *map(int, args[3:]))
    elif cmd == "span":
        b, o, t, g = args[:4]
        span(b, o, t, g, *map(int, args[4:]))
    elif cmd == "consume":
        b, t, g = args[:3]
        consume(b, t, g, *map(int, args[3:]))
    elif cmd == "admin":
        b, t, g, p = args
        admin(b, t, g, int(p))
    elif cmd == "metadata":
        b, t, g, n = args
        metadata(b, t, g, int(n))
    elif cmd == "committed":
        b, t, g, p = args
        committed(b, t, g, int(p))
    else:
        raise SystemExit(f"unknown command {cmd}")
