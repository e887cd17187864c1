//! The pure judgement of a chaos run: what the workload was acknowledged,
//! what every region served at the end, and what the nodes said about their
//! leases during the run, checked against the scenario's invariants.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::scenario::Check;
use crate::ops::drill::report::{check_views, Ack, Views};

/// What one node said of itself at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// When the question was sent (Unix ms, the runner's clock).
    pub asked_at_ms: i64,
    pub node: u64,
    pub region: String,
    /// It would take writes: its lease had time left and its region was not
    /// failed over, as it saw things.
    pub accepting: bool,
    /// Seals of its own region in its applied metadata.
    pub own_seals: usize,
}

/// A failover, as the control plane recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SealSeen {
    pub region: String,
    pub epoch: u32,
    /// Unix ms, by the metadata leader's clock.
    pub decided_at_ms: i64,
}

/// Everything a run saw.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub regions: Vec<String>,
    /// The `sync` topic, then the `async` one.
    pub topics: Vec<String>,
    pub acks: Vec<Ack>,
    /// Every region's view at the end.
    pub views: Views,
    pub observations: Vec<Observation>,
    /// Every seal, in the order the control plane made them.
    pub seals: Vec<SealSeen>,
    /// When the last fault healed (ms since the workload started).
    pub healed_at_ms: u64,
    /// How far clocks were set apart (ms): seal times and observation
    /// times are compared with this slack.
    pub skew_ms: u64,
    /// The regions that must have been failed over; `None`: not checked.
    pub expect_failovers: Option<BTreeSet<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub check: Check,
    pub passed: bool,
    /// What was checked, or what broke (with an example).
    pub detail: String,
}

/// Checks `run` against each of `checks`.
pub fn evaluate(run: &Run, checks: &BTreeSet<Check>) -> Vec<CheckResult> {
    checks
        .iter()
        .map(|c| {
            let (passed, detail) = match c {
                Check::SyncAcksKept => sync_acks_kept(run),
                Check::NoLossAfterHeal => per_topic(run, |v, t, acked| {
                    let lost = &v.lost;
                    match lost.iter().next() {
                        None => Ok(format!("{t}: all {acked} acknowledged records served")),
                        Some(e) => Err(format!(
                            "{t}: {} acknowledged records missing from some region, e.g. {e}",
                            lost.len()
                        )),
                    }
                }),
                Check::NoDuplicates => per_topic(run, |v, t, _| match v.duplicates {
                    0 => Ok(format!("{t}: no record served twice")),
                    n => Err(format!("{t}: {n} extra copies served")),
                }),
                Check::IdenticalViews => per_topic(run, |v, t, _| {
                    if v.identical {
                        Ok(format!("{t}: every region serves the same sequence"))
                    } else {
                        Err(format!(
                            "{t}: regions serve different sequences (or one served none)"
                        ))
                    }
                }),
                Check::HlcIncreasing => hlc_increasing(&run.views),
                Check::OneWriterPerEpoch => one_writer_per_epoch(run),
                Check::WritesResume => writes_resume(run),
                Check::Failovers => failovers(run),
            };
            CheckResult {
                check: *c,
                passed,
                detail,
            }
        })
        .collect()
}

fn acked_values<'a>(run: &'a Run, topic: &str) -> BTreeSet<&'a str> {
    run.acks
        .iter()
        .filter(|a| a.topic == topic && a.acked_ms.is_some())
        .map(|a| a.value.as_str())
        .collect()
}

/// Runs `f` on each topic's view check; passes if every topic passes.
fn per_topic(
    run: &Run,
    f: impl Fn(&crate::ops::drill::report::ViewCheck, &str, usize) -> Result<String, String>,
) -> (bool, String) {
    let mut ok = true;
    let mut lines = Vec::new();
    for t in &run.topics {
        let acked = acked_values(run, t);
        let v = check_views(acked.iter().copied(), &run.regions, &run.views, t);
        match f(&v, t, acked.len()) {
            Ok(s) => lines.push(s),
            Err(s) => {
                ok = false;
                lines.push(s);
            }
        }
    }
    (ok, lines.join("; "))
}

fn sync_acks_kept(run: &Run) -> (bool, String) {
    let Some(t) = run.topics.first() else {
        return (false, "no sync topic".into());
    };
    let acked = acked_values(run, t);
    let mut missing = BTreeSet::new();
    let mut reinjected = BTreeSet::new();
    for r in &run.regions {
        let served: BTreeMap<&str, bool> = run
            .views
            .get(r)
            .and_then(|v| v.get(t))
            .map(|parts| {
                parts
                    .iter()
                    .flatten()
                    .map(|x| (x.value.as_str(), x.reinjected.is_some()))
                    .collect()
            })
            .unwrap_or_default();
        for v in &acked {
            match served.get(v) {
                None => {
                    missing.insert(*v);
                }
                Some(true) => {
                    reinjected.insert(*v);
                }
                Some(false) => {}
            }
        }
    }
    if let Some(e) = missing.iter().next() {
        return (
            false,
            format!(
                "{} records acknowledged as sync missing from some region, e.g. {e}",
                missing.len()
            ),
        );
    }
    if let Some(e) = reinjected.iter().next() {
        return (
            false,
            format!(
                "{} records acknowledged as sync were past a seal (re-injected), e.g. {e}",
                reinjected.len()
            ),
        );
    }
    (
        true,
        format!("all {} sync acks served in place everywhere", acked.len()),
    )
}

/// Along each origin's records in each partition's view, HLCs strictly
/// increase; every record carries its identity headers.
fn hlc_increasing(views: &Views) -> (bool, String) {
    let mut records = 0usize;
    for (region, topics) in views {
        for (t, parts) in topics {
            for (p, recs) in parts.iter().enumerate() {
                let mut last: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
                for r in recs {
                    records += 1;
                    if r.origin.is_empty() || r.hlc == 0 {
                        return (
                            false,
                            format!(
                                "{region} serves {t}/{p} record {} without origin or HLC headers",
                                r.value
                            ),
                        );
                    }
                    if let Some((hlc, value)) = last.get(r.origin.as_str()) {
                        if r.hlc <= *hlc {
                            return (
                                false,
                                format!(
                                    "{region} serves {t}/{p}: origin {}'s {} (HLC {}) after {value} (HLC {hlc})",
                                    r.origin, r.value, r.hlc
                                ),
                            );
                        }
                    }
                    last.insert(&r.origin, (r.hlc, &r.value));
                }
            }
        }
    }
    (
        true,
        format!("{records} records checked, HLCs increase along every origin"),
    )
}

/// No region took writes for an epoch after the control plane had sealed
/// it (invariant 6), seen two ways: no node said it would (its `/status`
/// during the run), and no record of a sealed epoch that came back by
/// re-injection was stamped after the seal (a write accepted past the seal
/// is always re-injected, with its original HLC).
fn one_writer_per_epoch(run: &Run) -> (bool, String) {
    let slack = run.skew_ms as i64;
    let mut nth: BTreeMap<&str, usize> = BTreeMap::new();
    let mut stranded = 0usize;
    for s in &run.seals {
        let prefix = format!("{}/{}/", s.region, s.epoch);
        for (region, topics) in &run.views {
            for (t, parts) in topics {
                for r in parts.iter().flatten() {
                    let Some(x) = &r.reinjected else { continue };
                    if !x.from.starts_with(&prefix) {
                        continue;
                    }
                    stranded += 1;
                    let written = crate::hlc::wall_ms(x.hlc);
                    if written > s.decided_at_ms + slack {
                        return (
                            false,
                            format!(
                                "{region} serves {t} record {} ({}), written {} ms after {} epoch {} was sealed",
                                r.value,
                                x.from,
                                written - s.decided_at_ms,
                                s.region,
                                s.epoch
                            ),
                        );
                    }
                }
            }
        }
        let k = nth.entry(&s.region).or_default();
        let index = *k;
        *k += 1;
        let late = run.observations.iter().find(|o| {
            o.region == s.region
                && o.accepting
                && o.own_seals <= index
                && o.asked_at_ms > s.decided_at_ms + slack
        });
        if let Some(o) = late {
            return (
                false,
                format!(
                    "node {} of {} took writes {} ms after its epoch {} was sealed",
                    o.node,
                    o.region,
                    o.asked_at_ms - s.decided_at_ms,
                    s.epoch
                ),
            );
        }
    }
    let accepting = run.observations.iter().filter(|o| o.accepting).count();
    (
        true,
        format!(
            "{} seals; no writes after one ({accepting} of {} observations took writes; {stranded} re-injected copies of sealed epochs stamped before their seal)",
            run.seals.len(),
            run.observations.len()
        ),
    )
}

fn failovers(run: &Run) -> (bool, String) {
    let sealed: BTreeSet<String> = run.seals.iter().map(|s| s.region.clone()).collect();
    let list = |s: &BTreeSet<String>| {
        if s.is_empty() {
            "none".to_string()
        } else {
            s.iter().cloned().collect::<Vec<_>>().join(", ")
        }
    };
    match &run.expect_failovers {
        None => (
            true,
            format!("failed over: {} (not checked)", list(&sealed)),
        ),
        Some(want) if *want == sealed => {
            (true, format!("failed over: {}, as expected", list(&sealed)))
        }
        Some(want) => (
            false,
            format!(
                "failed over: {}; the scenario expects {}",
                list(&sealed),
                list(want)
            ),
        ),
    }
}

fn writes_resume(run: &Run) -> (bool, String) {
    let mut silent = Vec::new();
    for r in &run.regions {
        let wrote = run
            .acks
            .iter()
            .any(|a| a.writer == *r && a.sent_ms >= run.healed_at_ms && a.acked_ms.is_some());
        if !wrote {
            silent.push(r.as_str());
        }
    }
    if silent.is_empty() {
        (
            true,
            "every region's writers were acknowledged after the heal".into(),
        )
    } else {
        (
            false,
            format!(
                "no acknowledged write after the heal from {}",
                silent.join(", ")
            ),
        )
    }
}

/// The longest time each writer region went without an acknowledged write,
/// from its first write to its last (ms).
pub fn longest_outage(acks: &[Ack]) -> BTreeMap<String, u64> {
    let mut by: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for a in acks {
        if let Some(ms) = a.acked_ms {
            by.entry(&a.writer).or_default().push(ms);
        }
    }
    by.into_iter()
        .map(|(w, mut v)| {
            v.sort_unstable();
            let gap = v.windows(2).map(|x| x[1] - x[0]).max().unwrap_or(0);
            (w.to_string(), gap)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::drill::report::{Rec, Reinjected};

    const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
    /// The seal's time (Unix ms).
    const T: i64 = 1_800_000_000_000;

    fn rec(value: &str, origin: &str, hlc: u64) -> Rec {
        Rec {
            value: value.into(),
            reinjected: None,
            origin: origin.into(),
            hlc,
        }
    }

    fn ack(topic: &str, writer: &str, value: &str, sent: u64) -> Ack {
        Ack {
            topic: topic.into(),
            writer: writer.into(),
            value: value.into(),
            sent_ms: sent,
            acked_ms: Some(sent + 5),
            error: None,
        }
    }

    /// A clean run: two topics of one partition, three records each,
    /// served identically everywhere; one seal of us-east that us-east
    /// respected.
    fn clean() -> Run {
        let recs = vec![
            rec("us-east-0", "us-east", 10),
            rec("eu-west-0", "eu-west", 11),
            rec("us-east-1", "us-east", 20),
        ];
        let mut views = Views::new();
        for r in REGIONS {
            for t in ["s", "a"] {
                views
                    .entry(r.to_string())
                    .or_default()
                    .insert(t.to_string(), vec![recs.clone()]);
            }
        }
        let mut acks = Vec::new();
        for t in ["s", "a"] {
            acks.push(ack(t, "us-east", "us-east-0", 0));
            acks.push(ack(t, "eu-west", "eu-west-0", 100));
            acks.push(ack(t, "us-east", "us-east-1", 100));
            acks.push(Ack {
                acked_ms: None,
                error: Some("timed out".into()),
                ..ack(t, "ap-south", "ap-south-0", 0)
            });
        }
        acks.push(ack("a", "ap-south", "never-acked-but-fine", 100));
        acks.last_mut().unwrap().acked_ms = None;
        acks.push(ack("x", "ap-south", "ap-south-9", 100));
        Run {
            regions: REGIONS.map(String::from).to_vec(),
            topics: vec!["s".into(), "a".into()],
            acks,
            views,
            observations: vec![
                Observation {
                    asked_at_ms: T - 4_000,
                    node: 1,
                    region: "us-east".into(),
                    accepting: true,
                    own_seals: 0,
                },
                // After failback: its seal applied, it writes again.
                Observation {
                    asked_at_ms: T + 4_000,
                    node: 1,
                    region: "us-east".into(),
                    accepting: true,
                    own_seals: 1,
                },
            ],
            seals: vec![SealSeen {
                region: "us-east".into(),
                epoch: 0,
                decided_at_ms: T,
            }],
            healed_at_ms: 50,
            skew_ms: 0,
            expect_failovers: Some(["us-east".to_string()].into_iter().collect()),
        }
    }

    fn failed(run: &Run) -> Vec<Check> {
        evaluate(run, &Check::ALL.into_iter().collect())
            .into_iter()
            .filter(|c| !c.passed)
            .map(|c| c.check)
            .collect()
    }

    fn edit(run: &mut Run, region: &str, topic: &str, f: impl FnOnce(&mut Vec<Rec>)) {
        f(&mut run.views.get_mut(region).unwrap().get_mut(topic).unwrap()[0]);
    }

    /// The same edit in every region's view (so that views still agree).
    fn edit_everywhere(run: &mut Run, topic: &str, f: impl Fn(&mut Vec<Rec>)) {
        for reg in REGIONS {
            edit(run, reg, topic, &f);
        }
    }

    #[test]
    fn a_clean_run_passes_every_check() {
        let r = evaluate(&clean(), &Check::ALL.into_iter().collect());
        assert!(r.iter().all(|c| c.passed), "{r:#?}");
        assert_eq!(r.len(), Check::ALL.len());
    }

    #[test]
    fn each_broken_invariant_fails_its_check() {
        // A sync ack missing everywhere: lost, and not kept.
        let mut r = clean();
        edit_everywhere(&mut r, "s", |v| {
            v.remove(1);
        });
        assert_eq!(
            failed(&r),
            vec![Check::SyncAcksKept, Check::NoLossAfterHeal]
        );

        // A sync ack re-injected: present, but past a seal.
        let mut r = clean();
        edit_everywhere(&mut r, "s", |v| {
            v[1].reinjected = Some(Reinjected {
                from: "us-east/0/0".into(),
                hlc: 1,
            })
        });
        assert_eq!(failed(&r), vec![Check::SyncAcksKept]);

        // An async ack missing in one region: lost, and views differ.
        let mut r = clean();
        edit(&mut r, "ap-south", "a", |v| {
            v.remove(0);
        });
        assert_eq!(
            failed(&r),
            vec![Check::NoLossAfterHeal, Check::IdenticalViews]
        );

        // A duplicate everywhere.
        let mut r = clean();
        edit_everywhere(&mut r, "a", |v| v.push(rec("eu-west-0", "eu-west", 30)));
        assert_eq!(failed(&r), vec![Check::NoDuplicates]);

        // Same records, another order in one region.
        let mut r = clean();
        edit(&mut r, "eu-west", "a", |v| v.swap(0, 1));
        assert_eq!(failed(&r), vec![Check::IdenticalViews]);

        // An origin's HLC going backwards (everywhere, so views agree).
        let mut r = clean();
        edit_everywhere(&mut r, "a", |v| v[2].hlc = 10);
        assert_eq!(failed(&r), vec![Check::HlcIncreasing]);
        // ... or a record without identity.
        let mut r = clean();
        edit_everywhere(&mut r, "a", |v| v[1].origin.clear());
        assert_eq!(failed(&r), vec![Check::HlcIncreasing]);

        // A region that said it took writes after its epoch was sealed.
        let mut r = clean();
        r.observations[0].asked_at_ms = T + 1;
        assert_eq!(failed(&r), vec![Check::OneWriterPerEpoch]);
        // ... within the clock slack it is not a finding.
        r.skew_ms = 10;
        assert!(failed(&r).is_empty());

        // A failover the scenario did not expect, or a missing one.
        let mut r = clean();
        r.expect_failovers = Some(BTreeSet::new());
        assert_eq!(failed(&r), vec![Check::Failovers]);
        r.seals.clear();
        r.observations.clear();
        assert!(failed(&r).is_empty());
        r.expect_failovers = Some(["eu-west".to_string()].into_iter().collect());
        assert_eq!(failed(&r), vec![Check::Failovers]);

        // A record of the sealed epoch re-injected with an HLC after the
        // seal: it was accepted while another region had taken over.
        let mut r = clean();
        let stamped = |ms: i64| Reinjected {
            from: "us-east/0/7".into(),
            hlc: crate::hlc::from_wall_ms(ms),
        };
        edit_everywhere(&mut r, "a", |v| {
            v.push(Rec {
                reinjected: Some(stamped(T - 500)),
                ..rec("us-east-7", "eu-west", 40)
            })
        });
        assert!(failed(&r).is_empty(), "stamped before the seal");
        edit_everywhere(&mut r, "a", |v| {
            v.last_mut().unwrap().reinjected = Some(stamped(T + 1))
        });
        assert_eq!(failed(&r), vec![Check::OneWriterPerEpoch]);

        // A region that never wrote after the heal.
        let mut r = clean();
        r.healed_at_ms = 101;
        assert_eq!(failed(&r), vec![Check::WritesResume]);
    }

    #[test]
    fn outages_are_the_longest_gap_between_acks() {
        let acks = vec![
            ack("s", "us-east", "a", 0),
            ack("s", "us-east", "b", 1_000),
            ack("s", "us-east", "c", 1_100),
            ack("s", "eu-west", "d", 0),
        ];
        let o = longest_outage(&acks);
        assert_eq!(o["us-east"], 1_000);
        assert_eq!(o["eu-west"], 0);
    }
}
