//! What a drill observed, and the pure judgement of it: RTO, RPO,
//! re-injections, duplicates and whether every region ended with the same
//! view. Rendered as text, JSON and Markdown.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use super::Mode;

/// One record the workload tried to write.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ack {
    pub topic: String,
    /// The region whose brokers the writer bootstrapped from.
    pub writer: String,
    /// `writer-seq`, unique per topic.
    pub value: String,
    pub sent_ms: u64,
    /// When it was acknowledged (ms since the drill's start), if it was.
    pub acked_ms: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    pub t_ms: u64,
    pub what: String,
}

/// A record as a region serves it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rec {
    pub value: String,
    /// Its `meridian.reinjected.from` and `meridian.reinjected.hlc`, if it
    /// was re-injected at a failback.
    pub reinjected: Option<Reinjected>,
    /// `meridian.origin`: the region whose log it is in.
    pub origin: String,
    /// `meridian.hlc`.
    pub hlc: u64,
}

/// Where a re-injected record came from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reinjected {
    /// `region/epoch/offset` in the origin log it was first written to.
    pub from: String,
    /// Its HLC there.
    pub hlc: u64,
}

/// Per region: per topic, per partition, the records in view order.
pub type Views = BTreeMap<String, BTreeMap<String, Vec<Vec<Rec>>>>;

/// Everything the drill saw.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub region: String,
    pub mode: Option<Mode>,
    pub regions: Vec<String>,
    /// The `sync` topic, then the `async` one.
    pub topics: Vec<String>,
    pub failed_at_ms: u64,
    pub sealed_at_ms: u64,
    /// When the failback began (0: never).
    pub failback_at_ms: u64,
    pub acks: Vec<Ack>,
    /// Per reader (a region, or `clients of R`): value of the `sync` topic
    /// -> when it was first readable (ms since the start).
    pub seen: BTreeMap<String, BTreeMap<String, u64>>,
    /// The surviving regions' views while the region was still failed.
    pub before_failback: Views,
    /// Every region's views at the end.
    pub after: Views,
    pub events: Vec<Event>,
}

/// Recovery times of one group of clients, from the failure.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rto {
    /// Clients bootstrapped at this region (`clients of R` for the failed
    /// one's, which know every region's brokers).
    pub clients: String,
    /// First acknowledged write issued after the failure (after the
    /// first failed one, if writes failed).
    pub write_ms: Option<u64>,
    /// First read of a record written after the failure.
    pub read_ms: Option<u64>,
    /// If writes failed again after the failback: from the first such
    /// failed write to the first acknowledged one after it.
    pub failback_gap_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TopicReport {
    pub topic: String,
    pub replication: String,
    pub acknowledged: usize,
    pub failed_writes: usize,
    /// Records acknowledged before the failover that a surviving region
    /// did not serve while the region was failed: the RPO.
    pub rpo_records: usize,
    /// Age at the failover of the oldest of those (ms).
    pub rpo_ms: u64,
    /// Acknowledged records missing from some region's view at the end.
    pub lost_after_failback: usize,
    /// Records served with `meridian.reinjected.from` at the end.
    pub reinjected: usize,
    /// Extra copies of records in any region's view at the end.
    pub duplicates: usize,
    pub views_identical: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub region: String,
    pub mode: Option<Mode>,
    pub failed_at_ms: u64,
    /// From the failure to the seal (failover).
    pub failover_ms: u64,
    pub rto: Vec<Rto>,
    /// The largest RTO of any group of clients, writes or reads.
    pub rto_max_ms: Option<u64>,
    pub topics: Vec<TopicReport>,
    pub timeline: Vec<Event>,
    /// Why writes failed, per writer region and error, with counts.
    pub write_errors: Vec<WriteErrors>,
    /// Broken invariants; empty when the drill passed.
    pub problems: Vec<String>,
}

/// Failed writes of one writer region with one error.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WriteErrors {
    pub writer: String,
    pub error: String,
    pub count: usize,
    /// When the first of them was sent (ms since the start).
    pub first_sent_ms: u64,
}

/// Failed writes grouped by writer and error.
fn write_errors(acks: &[Ack]) -> Vec<WriteErrors> {
    let mut m: BTreeMap<(String, String), WriteErrors> = BTreeMap::new();
    for a in acks {
        let Some(e) = &a.error else { continue };
        let error: String = e.chars().take(160).collect();
        let w = m
            .entry((a.writer.clone(), error.clone()))
            .or_insert(WriteErrors {
                writer: a.writer.clone(),
                error,
                count: 0,
                first_sent_ms: a.sent_ms,
            });
        w.count += 1;
        w.first_sent_ms = w.first_sent_ms.min(a.sent_ms);
    }
    let mut v: Vec<WriteErrors> = m.into_values().collect();
    v.sort_by_key(|w| w.first_sent_ms);
    v
}

impl Report {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The reader label of the failed region's clients.
pub fn clients_of(region: &str) -> String {
    format!("clients of {region}")
}

/// The values of `topic` that `region` serves in `views`.
pub fn values_in<'a>(views: &'a Views, region: &str, topic: &str) -> BTreeSet<&'a str> {
    views
        .get(region)
        .and_then(|v| v.get(topic))
        .map(|parts| parts.iter().flatten().map(|r| r.value.as_str()).collect())
        .unwrap_or_default()
}

/// What every region's final view says of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewCheck {
    /// Acknowledged values missing from some region's view.
    pub lost: BTreeSet<String>,
    /// Extra copies of records, summed over regions.
    pub duplicates: usize,
    /// Every region serves the topic, and all serve the same sequence.
    pub identical: bool,
    /// Records carrying `meridian.reinjected.from` (in the first region).
    pub reinjected: usize,
}

/// Checks `topic` in every region's `views` against the acknowledged
/// values (invariants 3, 4 and 7).
pub fn check_views<'a>(
    acked: impl Iterator<Item = &'a str> + Clone,
    regions: &[String],
    views: &Views,
    topic: &str,
) -> ViewCheck {
    let mut lost = BTreeSet::new();
    let mut duplicates = 0;
    for r in regions {
        let held = values_in(views, r, topic);
        lost.extend(
            acked
                .clone()
                .filter(|v| !held.contains(v))
                .map(str::to_string),
        );
        let all = views
            .get(r)
            .and_then(|v| v.get(topic))
            .map_or(0, |parts| parts.iter().map(Vec::len).sum::<usize>());
        duplicates += all - held.len();
    }
    let distinct: BTreeSet<_> = regions
        .iter()
        .map(|r| views.get(r).and_then(|v| v.get(topic)))
        .collect();
    let identical = distinct.len() == 1 && distinct.iter().all(|v| v.is_some());
    let reinjected = views
        .values()
        .next()
        .and_then(|v| v.get(topic))
        .map_or(0, |parts| {
            parts
                .iter()
                .flatten()
                .filter(|r| r.reinjected.is_some())
                .count()
        });
    ViewCheck {
        lost,
        duplicates,
        identical,
        reinjected,
    }
}

/// Judges what a drill saw.
pub fn evaluate(o: &Observed) -> Report {
    let t0 = o.failed_at_ms;
    let mut problems = Vec::new();
    let topics = o
        .topics
        .iter()
        .enumerate()
        .map(|(i, t)| topic_report(o, t, i == 0, &mut problems))
        .collect();
    let rto = rto_of(o);
    let rto_max_ms = rto
        .iter()
        .flat_map(|r| [r.write_ms, r.read_ms])
        .collect::<Option<Vec<u64>>>()
        .and_then(|v| v.into_iter().max());
    if rto.iter().any(|r| r.write_ms.is_none()) {
        problems.push("some clients never wrote again after the failure".to_string());
    }
    Report {
        region: o.region.clone(),
        mode: o.mode,
        failed_at_ms: t0,
        failover_ms: o.sealed_at_ms.saturating_sub(t0),
        rto,
        rto_max_ms,
        topics,
        timeline: o.events.clone(),
        write_errors: write_errors(&o.acks),
        problems,
    }
}

/// One topic's RPO, losses, duplicates and views; what is wrong goes to
/// `problems`. The drill's first topic is its `sync` one.
fn topic_report(o: &Observed, t: &str, sync: bool, problems: &mut Vec<String>) -> TopicReport {
    let mine: Vec<&Ack> = o.acks.iter().filter(|a| a.topic == *t).collect();
    let acked: BTreeMap<&str, u64> = mine
        .iter()
        .filter_map(|a| a.acked_ms.map(|ms| (a.value.as_str(), ms)))
        .collect();
    // RPO: acknowledged before the failover (an isolated region takes
    // writes until its lease runs out), not served by a survivor while
    // the region was failed.
    let mut missing: BTreeMap<&str, u64> = BTreeMap::new();
    for r in o.regions.iter().filter(|r| **r != o.region) {
        let held = values_in(&o.before_failback, r, t);
        for (v, ms) in acked.iter().filter(|(_, ms)| **ms <= o.sealed_at_ms) {
            if !held.contains(*v) {
                missing.insert(v, *ms);
            }
        }
    }
    let rpo_ms = missing
        .values()
        .map(|ms| o.sealed_at_ms.saturating_sub(*ms))
        .max()
        .unwrap_or(0);
    let ViewCheck {
        lost,
        duplicates,
        identical,
        reinjected,
    } = check_views(acked.keys().copied(), &o.regions, &o.after, t);
    let name = if sync { "sync" } else { "async" };
    if sync && !missing.is_empty() {
        problems.push(format!(
            "{t}: {} records acknowledged as sync were not served after the failover (invariant 7)",
            missing.len()
        ));
    }
    if !lost.is_empty() {
        problems.push(format!(
            "{t}: {} acknowledged records missing after failback, e.g. {}",
            lost.len(),
            lost.iter().next().expect("non-empty")
        ));
    }
    if duplicates > 0 {
        problems.push(format!(
            "{t}: {duplicates} records served twice (invariant 3)"
        ));
    }
    if !identical {
        problems.push(format!("{t}: regions serve different views (invariant 4)"));
    }
    TopicReport {
        topic: t.to_string(),
        replication: name.to_string(),
        acknowledged: acked.len(),
        failed_writes: mine.len() - acked.len(),
        rpo_records: missing.len(),
        rpo_ms,
        lost_after_failback: lost.len(),
        reinjected,
        duplicates,
        views_identical: identical,
    }
}

/// RTO per group of clients: each surviving region's, and the failed
/// region's clients.
fn rto_of(o: &Observed) -> Vec<Rto> {
    let t0 = o.failed_at_ms;
    let sync_topic = o.topics.first().cloned().unwrap_or_default();
    let written_after: BTreeMap<&str, &Ack> = o
        .acks
        .iter()
        .filter(|a| a.topic == sync_topic && a.sent_ms >= t0 && a.acked_ms.is_some())
        .map(|a| (a.value.as_str(), a))
        .collect();
    let mut rto = Vec::new();
    let groups = o
        .regions
        .iter()
        .filter(|r| **r != o.region)
        .map(|r| (r.clone(), r.clone()))
        .chain(std::iter::once((o.region.clone(), clients_of(&o.region))));
    for (writer, label) in groups {
        // The first write acknowledged after the failure, or, when writes
        // failed after it (an isolated region takes writes until its lease
        // runs out), the first acknowledged after the first failure before
        // the failback. Failures after the failback are the failback's
        // cost, reported apart.
        let failback = if o.failback_at_ms == 0 {
            u64::MAX
        } else {
            o.failback_at_ms
        };
        let after: Vec<&Ack> = o
            .acks
            .iter()
            .filter(|a| a.writer == writer && a.sent_ms >= t0)
            .collect();
        let first_failure_from = |from: u64, until: u64| {
            after
                .iter()
                .filter(|a| a.acked_ms.is_none() && (from..until).contains(&a.sent_ms))
                .map(|a| a.sent_ms)
                .min()
        };
        let first_ack_from = |from: u64| {
            after
                .iter()
                .filter(|a| a.sent_ms >= from)
                .filter_map(|a| a.acked_ms)
                .min()
        };
        let first_failure = first_failure_from(t0, failback).unwrap_or(t0);
        let write_ms = first_ack_from(first_failure).map(|ms| ms - t0);
        let failback_gap_ms = first_failure_from(failback, u64::MAX)
            .and_then(|f| first_ack_from(f).map(|ms| ms.saturating_sub(f)));
        let read_ms = o.seen.get(&label).and_then(|seen| {
            seen.iter()
                .filter(|(v, _)| written_after.contains_key(v.as_str()))
                .map(|(_, ms)| ms.saturating_sub(t0))
                .min()
        });
        rto.push(Rto {
            clients: label,
            write_ms,
            read_ms,
            failback_gap_ms,
        });
    }
    rto
}

fn mode_name(m: Option<Mode>) -> &'static str {
    match m {
        Some(Mode::Kill) => "kill",
        Some(Mode::Isolate) => "isolate",
        None => "?",
    }
}

fn ms(v: Option<u64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v} ms"))
}

/// One RTO row: clients, write, read, failback gap.
fn rto_cells(x: &Rto) -> [String; 4] {
    [
        x.clients.clone(),
        ms(x.write_ms),
        ms(x.read_ms),
        ms(x.failback_gap_ms),
    ]
}

/// One topic row, in the order of the tables' columns; the text table
/// leaves out the last (identical views, which its verdict line covers).
fn topic_cells(t: &TopicReport) -> [String; 10] {
    [
        t.topic.clone(),
        t.replication.clone(),
        t.acknowledged.to_string(),
        t.failed_writes.to_string(),
        t.rpo_records.to_string(),
        t.rpo_ms.to_string(),
        t.reinjected.to_string(),
        t.duplicates.to_string(),
        t.lost_after_failback.to_string(),
        t.views_identical.to_string(),
    ]
}

/// A text table row: the first cell left-aligned in its width, the others
/// right-aligned, one space apart.
fn text_row<S: AsRef<str>>(cells: &[S], widths: &[usize]) -> String {
    let mut line = String::new();
    for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
        if i == 0 {
            let _ = write!(line, "{:<w$}", c.as_ref());
        } else {
            let _ = write!(line, " {:>w$}", c.as_ref());
        }
    }
    line
}

/// A Markdown table row.
fn md_row<S: AsRef<str>>(cells: &[S]) -> String {
    let inner: Vec<&str> = cells.iter().map(AsRef::as_ref).collect();
    format!("| {} |", inner.join(" | "))
}

/// A Markdown table's header and separator lines.
fn md_header(names: &[&str]) -> String {
    format!("{}\n|{}", md_row(names), "---|".repeat(names.len()))
}

const RTO_TEXT_WIDTHS: [usize; 4] = [22, 12, 12, 16];
const TOPIC_TEXT_WIDTHS: [usize; 9] = [28, 6, 6, 7, 7, 9, 8, 6, 10];

/// The report as the terminal shows it.
pub fn text(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nDrill: {} failed ({}); failed over after {} ms",
        r.region,
        mode_name(r.mode),
        r.failover_ms
    );
    let header = ["RTO", "write", "read", "failback gap"];
    let _ = writeln!(s, "\n{}", text_row(&header, &RTO_TEXT_WIDTHS));
    for x in &r.rto {
        let _ = writeln!(s, "{}", text_row(&rto_cells(x), &RTO_TEXT_WIDTHS));
    }
    let header = [
        "topic",
        "repl",
        "acked",
        "failed",
        "RPO",
        "RPO ms",
        "reinj.",
        "dups",
        "lost after",
    ];
    let _ = writeln!(s, "\n{}", text_row(&header, &TOPIC_TEXT_WIDTHS));
    for t in &r.topics {
        let _ = writeln!(s, "{}", text_row(&topic_cells(t), &TOPIC_TEXT_WIDTHS));
    }
    if !r.write_errors.is_empty() {
        let _ = writeln!(s, "\nfailed writes (first sent, writer, count, error):");
        for w in &r.write_errors {
            let _ = writeln!(
                s,
                "  {:>7.1} s  {:<10} {:>5}  {}",
                w.first_sent_ms as f64 / 1000.0,
                w.writer,
                w.count,
                w.error
            );
        }
    }
    if r.passed() {
        let _ = writeln!(
            s,
            "\nPASSED: nothing acknowledged as sync lost, nothing lost after failback, no duplicates, identical views."
        );
    } else {
        let _ = writeln!(s, "\nFAILED:");
        for p in &r.problems {
            let _ = writeln!(s, "  - {p}");
        }
    }
    s
}

/// The report as Markdown, with the timeline as a Mermaid chart.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# DR drill: {} ({})\n", r.region, mode_name(r.mode));
    let _ = writeln!(
        s,
        "**{}**. Failed over {} ms after the failure; largest RTO {}.\n",
        if r.passed() { "Passed" } else { "Failed" },
        r.failover_ms,
        ms(r.rto_max_ms)
    );
    for p in &r.problems {
        let _ = writeln!(s, "- {p}");
    }
    let header = ["clients", "write", "read", "failback gap"];
    let _ = writeln!(s, "\n## RTO\n\n{}", md_header(&header));
    for x in &r.rto {
        let _ = writeln!(s, "{}", md_row(&rto_cells(x)));
    }
    let header = [
        "topic",
        "replication",
        "acknowledged",
        "failed writes",
        "RPO (records)",
        "RPO (ms)",
        "re-injected",
        "duplicates",
        "lost after failback",
        "identical views",
    ];
    let _ = writeln!(s, "\n## Topics\n\n{}", md_header(&header));
    for t in &r.topics {
        let _ = writeln!(s, "{}", md_row(&topic_cells(t)));
    }
    let _ = writeln!(
        s,
        "\n## Timeline\n\n```mermaid\ngantt\n    dateFormat x\n    axisFormat %S s"
    );
    let end = r.timeline.last().map_or(0, |e| e.t_ms);
    let _ = writeln!(s, "    section {}", r.region);
    let sealed = r.failed_at_ms + r.failover_ms;
    let _ = writeln!(
        s,
        "    failed, not yet failed over :crit, {}, {}",
        r.failed_at_ms,
        sealed.max(r.failed_at_ms + 1)
    );
    let _ = writeln!(
        s,
        "    failed over :active, {}, {}",
        sealed,
        end.max(sealed + 1)
    );
    let _ = writeln!(s, "    section events");
    for e in &r.timeline {
        let name: String = e.what.chars().filter(|c| *c != ':' && *c != ';').collect();
        let _ = writeln!(s, "    {name} :milestone, {}, 0", e.t_ms);
    }
    let _ = writeln!(s, "```\n\n{}", md_header(&["t (s)", "event"]));
    for e in &r.timeline {
        let t = format!("{:.1}", e.t_ms as f64 / 1000.0);
        let _ = writeln!(s, "{}", md_row(&[t.as_str(), &e.what]));
    }
    if !r.write_errors.is_empty() {
        let header = ["first sent (s)", "writer", "count", "error"];
        let _ = writeln!(s, "\n## Failed writes\n\n{}", md_header(&header));
        for w in &r.write_errors {
            let cells = [
                format!("{:.1}", w.first_sent_ms as f64 / 1000.0),
                w.writer.clone(),
                w.count.to_string(),
                w.error.replace('|', "/"),
            ];
            let _ = writeln!(s, "{}", md_row(&cells));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(topic: &str, writer: &str, seq: u64, sent: u64, acked: Option<u64>) -> Ack {
        Ack {
            topic: topic.into(),
            writer: writer.into(),
            value: format!("{writer}-{seq}"),
            sent_ms: sent,
            acked_ms: acked,
            error: None,
        }
    }

    fn rec(v: &str) -> Rec {
        Rec {
            value: v.into(),
            reinjected: None,
            origin: String::new(),
            hlc: 0,
        }
    }

    fn views(regions: &[&str], topics: &[(&str, Vec<Rec>)]) -> Views {
        regions
            .iter()
            .map(|r| {
                (
                    r.to_string(),
                    topics
                        .iter()
                        .map(|(t, recs)| (t.to_string(), vec![recs.clone()]))
                        .collect(),
                )
            })
            .collect()
    }

    /// A drill in which us-east acknowledged one sync and one async record
    /// just before it failed; the async one reached nobody and was
    /// re-injected at failback.
    fn observed() -> Observed {
        let regions = ["us-east", "eu-west", "ap-south"];
        let seen: BTreeMap<String, BTreeMap<String, u64>> = [
            ("eu-west", 9_000),
            ("ap-south", 9_500),
            ("clients of us-east", 9_800),
        ]
        .into_iter()
        .map(|(r, ms)| (r.to_string(), [("eu-west-1".to_string(), ms)].into()))
        .collect();
        Observed {
            region: "us-east".into(),
            mode: Some(Mode::Kill),
            regions: regions.map(String::from).to_vec(),
            topics: vec!["s".into(), "a".into()],
            failed_at_ms: 5_000,
            sealed_at_ms: 9_000,
            failback_at_ms: 12_000,
            acks: vec![
                ack("s", "us-east", 0, 4_000, Some(4_100)),
                ack("a", "us-east", 0, 4_900, Some(4_950)),
                ack("s", "eu-west", 1, 5_100, Some(5_300)),
                ack("s", "ap-south", 0, 5_100, Some(5_250)),
                ack("s", "us-east", 1, 5_200, Some(7_200)),
                Ack {
                    error: Some("connection refused".into()),
                    ..ack("a", "us-east", 1, 5_150, None)
                },
            ],
            seen,
            before_failback: views(
                &regions[1..],
                &[
                    (
                        "s",
                        vec![
                            rec("us-east-0"),
                            rec("eu-west-1"),
                            rec("ap-south-0"),
                            rec("us-east-1"),
                        ],
                    ),
                    ("a", vec![]),
                ],
            ),
            after: views(
                &regions,
                &[
                    (
                        "s",
                        vec![
                            rec("us-east-0"),
                            rec("eu-west-1"),
                            rec("ap-south-0"),
                            rec("us-east-1"),
                        ],
                    ),
                    (
                        "a",
                        vec![Rec {
                            reinjected: Some(Reinjected {
                                from: "us-east/1/0".into(),
                                hlc: 1,
                            }),
                            ..rec("us-east-0")
                        }],
                    ),
                ],
            ),
            events: vec![],
        }
    }

    #[test]
    fn a_clean_drill_passes_with_its_figures() {
        let r = evaluate(&observed());
        assert_eq!(r.failover_ms, 4_000);
        let (s, a) = (&r.topics[0], &r.topics[1]);
        assert_eq!((s.rpo_records, s.lost_after_failback), (0, 0));
        assert_eq!((a.rpo_records, a.rpo_ms, a.reinjected), (1, 4_050, 1));
        assert_eq!(a.failed_writes, 1);
        assert_eq!(r.write_errors.len(), 1);
        assert_eq!(
            (r.write_errors[0].writer.as_str(), r.write_errors[0].count),
            ("us-east", 1)
        );
        assert_eq!(r.rto[0].clients, "eu-west");
        assert_eq!(
            (r.rto[0].write_ms, r.rto[0].read_ms),
            (Some(300), Some(4_000))
        );
        assert_eq!(r.rto[2].clients, "clients of us-east");
        assert_eq!(r.rto[2].write_ms, Some(2_200));
        assert_eq!(r.rto_max_ms, Some(4_800));
        assert!(r.rto.iter().all(|x| x.failback_gap_ms.is_none()));
        assert!(text(&r).contains("PASSED"));
        assert!(markdown(&r).contains("```mermaid"));
    }

    #[test]
    fn writes_failing_after_the_failback_are_a_gap_not_the_rto() {
        let mut o = observed();
        // eu-west's writes fail for a moment after the failback (12 s).
        o.acks.push(Ack {
            error: Some("holds no write lease".into()),
            ..ack("s", "eu-west", 7, 12_500, None)
        });
        o.acks.push(ack("s", "eu-west", 8, 12_600, Some(13_100)));
        let r = evaluate(&o);
        assert_eq!(r.rto[0].clients, "eu-west");
        assert_eq!(r.rto[0].write_ms, Some(300), "the RTO of the failure");
        assert_eq!(r.rto[0].failback_gap_ms, Some(600));
        assert!(text(&r).contains("failback gap"));
        // Without the failback time, the same failure would be the RTO.
        o.failback_at_ms = 0;
        let r = evaluate(&o);
        assert_eq!(r.rto[0].write_ms, Some(8_100));
        assert_eq!(r.rto[0].failback_gap_ms, None);
    }

    #[test]
    fn each_broken_invariant_fails_the_drill() {
        // A sync record lost in the failover.
        let mut o = observed();
        o.before_failback = views(&["eu-west", "ap-south"], &[("s", vec![]), ("a", vec![])]);
        assert!(evaluate(&o).problems[0].contains("acknowledged as sync"));
        // An async record never re-injected.
        let mut o = observed();
        for v in o.after.values_mut() {
            v.insert("a".into(), vec![vec![]]);
        }
        assert!(evaluate(&o).problems[0].contains("missing after failback"));
        // A record twice.
        let mut o = observed();
        for v in o.after.values_mut() {
            v.get_mut("s").unwrap()[0].push(rec("us-east-0"));
        }
        assert!(evaluate(&o).problems[0].contains("served twice"));
        // Regions that disagree.
        let mut o = observed();
        o.after.get_mut("ap-south").unwrap().get_mut("s").unwrap()[0].swap(0, 1);
        assert!(evaluate(&o).problems[0].contains("different views"));
    }
}
