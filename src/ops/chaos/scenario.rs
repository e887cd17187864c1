//! Chaos scenarios as data: a TOML file with a schedule of faults and the
//! invariants to check (docs/disaster-recovery.md#chaos-scenarios). This
//! module is pure: parsing, checking a scenario against a topology, the
//! timeline of starts and heals, and the fault-layer state each node gets.
//!
//! ```toml
//! name = "region-loss"
//! description = "every node of us-east dies and comes back"
//! checks = ["sync-acks-kept", "no-loss-after-heal"]   # default: all
//!
//! [workload]          # optional
//! rate = 20           # records/s per writer (one per region and topic)
//! partitions = 2
//!
//! [settings]          # optional node settings, as `meridian dev --set`
//! "control.lease_ms" = 5000
//!
//! [[fault]]
//! at_s = 5            # after the workload started
//! for_s = 12          # then healed
//! do = "kill-region"
//! region = "us-east"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Topology;
use crate::ids::NodeId;
use crate::transport::faults::{pair, ExtraDelay, FaultState, Loss};

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: fault {index} (`{fault}`): {message}")]
    Fault {
        path: PathBuf,
        index: usize,
        fault: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// An invariant a run checks (architecture.md numbers in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// Every record acknowledged on the `sync` topic is in every region's
    /// view in place, never re-injected (7).
    SyncAcksKept,
    /// Every acknowledged record is in every region's view after the
    /// faults heal (7).
    NoLossAfterHeal,
    /// No record twice in any region's view (3).
    NoDuplicates,
    /// Every region serves the same sequence (4).
    IdenticalViews,
    /// HLCs strictly increase along each origin's records in the view (2).
    HlcIncreasing,
    /// No region reported taking writes for an epoch the control plane
    /// had already sealed (6).
    OneWriterPerEpoch,
    /// Writers of every region were acknowledged again after the heal.
    WritesResume,
    /// Exactly the regions in `expect_failovers` were failed over (passes
    /// when the scenario sets no expectation).
    Failovers,
}

impl Check {
    pub const ALL: [Check; 8] = [
        Check::SyncAcksKept,
        Check::NoLossAfterHeal,
        Check::NoDuplicates,
        Check::IdenticalViews,
        Check::HlcIncreasing,
        Check::OneWriterPerEpoch,
        Check::WritesResume,
        Check::Failovers,
    ];

    /// Its name in scenario files and reports (`sync-acks-kept`, ...).
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// A fault, resolved against the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum Action {
    /// SIGKILL a node; restart it at the heal.
    KillNode { node: NodeId },
    /// SIGKILL the node of `region` that leads most partitions when the
    /// fault starts; restart it at the heal.
    KillLeader { region: String },
    /// SIGKILL every node of a region; restart them at the heal.
    KillRegion { region: String },
    /// Cut a region off from every other one.
    IsolateRegion { region: String },
    /// Cut one region pair.
    Partition { a: String, b: String },
    /// Add round-trip time between two regions.
    Delay { a: String, b: String, ms: u64 },
    /// Lose a share of the requests between two regions.
    Loss { a: String, b: String, percent: u8 },
    /// Run a node's clock `ms` ahead (negative: behind).
    Skew { node: NodeId, ms: i64 },
    /// SIGSTOP a node; SIGCONT at the heal.
    Pause { node: NodeId },
}

impl Action {
    /// Whether the fault is set through the nodes' fault layers (`/faults`)
    /// rather than by signals.
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            Action::IsolateRegion { .. }
                | Action::Partition { .. }
                | Action::Delay { .. }
                | Action::Loss { .. }
                | Action::Skew { .. }
        )
    }

    pub fn describe(&self) -> String {
        match self {
            Action::KillNode { node } => format!("kill node {node}"),
            Action::KillLeader { region } => format!("kill the busiest leader of {region}"),
            Action::KillRegion { region } => format!("kill every node of {region}"),
            Action::IsolateRegion { region } => format!("isolate {region}"),
            Action::Partition { a, b } => format!("cut {a} <-> {b}"),
            Action::Delay { a, b, ms } => format!("add {ms} ms round trip {a} <-> {b}"),
            Action::Loss { a, b, percent } => format!("lose {percent}% of {a} <-> {b}"),
            Action::Skew { node, ms } => format!("skew node {node}'s clock by {ms} ms"),
            Action::Pause { node } => format!("pause node {node}"),
        }
    }
}

/// One occurrence of a fault: from `at` after the workload started, for
/// `hold`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub at: Duration,
    pub hold: Duration,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadSpec {
    pub rate: u32,
    pub partitions: u32,
}

/// A checked scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub workload: WorkloadSpec,
    /// Node settings (`section.key` -> TOML value as text).
    pub settings: Vec<(String, String)>,
    /// Every occurrence, repeats expanded, by start time.
    pub faults: Vec<Fault>,
    pub checks: BTreeSet<Check>,
    /// Writing goes on this long after the last heal and recovery.
    pub settle: Duration,
    /// The regions the scenario must fail over (each at least once), and
    /// no others; `None`: not checked.
    pub expect_failovers: Option<BTreeSet<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    checks: Option<Vec<Check>>,
    #[serde(default)]
    workload: RawWorkload,
    #[serde(default)]
    settings: BTreeMap<String, toml::Value>,
    #[serde(default = "default_settle_s")]
    settle_s: f64,
    #[serde(default, rename = "fault")]
    faults: Vec<RawFault>,
    #[serde(default)]
    expect_failovers: Option<Vec<String>>,
}

fn default_settle_s() -> f64 {
    5.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    #[serde(default = "default_rate")]
    rate: u32,
    #[serde(default = "default_partitions")]
    partitions: u32,
}

fn default_rate() -> u32 {
    20
}

fn default_partitions() -> u32 {
    2
}

impl Default for RawWorkload {
    fn default() -> Self {
        RawWorkload {
            rate: default_rate(),
            partitions: default_partitions(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    #[serde(rename = "do")]
    action: String,
    at_s: f64,
    for_s: f64,
    /// Occurrences (default 1), `every_s` apart.
    repeat: Option<u32>,
    every_s: Option<f64>,
    node: Option<NodeId>,
    region: Option<String>,
    a: Option<String>,
    b: Option<String>,
    ms: Option<i64>,
    percent: Option<u8>,
}

const ACTIONS: &str =
    "kill-node, kill-leader, kill-region, isolate-region, partition, delay, loss, skew, pause";

/// The longest a scenario may run its faults: it is a test, not a soak.
pub const MAX_SPAN: Duration = Duration::from_secs(600);

impl Scenario {
    pub fn load(path: &Path, topology: &Topology) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ScenarioError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Scenario::parse(&text, path, topology)
    }

    pub fn parse(text: &str, path: &Path, topology: &Topology) -> Result<Scenario, ScenarioError> {
        let invalid = |message: String| ScenarioError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawScenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if raw.faults.is_empty() {
            return Err(invalid(
                "no [[fault]] tables: a scenario needs at least one fault".into(),
            ));
        }
        if raw.workload.rate == 0 || raw.workload.rate > 1000 {
            return Err(invalid(format!(
                "workload.rate = {}: use 1 to 1000 records per second per writer",
                raw.workload.rate
            )));
        }
        if raw.workload.partitions == 0 || raw.workload.partitions > 64 {
            return Err(invalid(format!(
                "workload.partitions = {}: use 1 to 64",
                raw.workload.partitions
            )));
        }
        if !(0.0..=600.0).contains(&raw.settle_s) {
            return Err(invalid(format!(
                "settle_s = {}: use 0 to 600 seconds",
                raw.settle_s
            )));
        }
        let mut faults = Vec::new();
        for (i, f) in raw.faults.iter().enumerate() {
            faults.extend(occurrences(f, i, path, topology)?);
        }
        faults.sort_by_key(|f| f.at);
        let span = faults
            .iter()
            .map(|f| f.at + f.hold)
            .max()
            .unwrap_or_default();
        if span > MAX_SPAN {
            return Err(invalid(format!(
                "the last fault heals after {} s; keep scenarios under {} s",
                span.as_secs(),
                MAX_SPAN.as_secs()
            )));
        }
        overlapping_process_faults(&faults, topology).map_err(invalid)?;
        for r in raw.expect_failovers.iter().flatten() {
            if !topology.regions.iter().any(|x| x.name == *r) {
                return Err(invalid(format!(
                    "expect_failovers names \"{r}\", which is not a region of the topology"
                )));
            }
        }
        let settings = raw
            .settings
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect();
        Ok(Scenario {
            name: raw.name,
            description: raw.description,
            workload: WorkloadSpec {
                rate: raw.workload.rate,
                partitions: raw.workload.partitions,
            },
            settings,
            faults,
            checks: raw.checks.map_or_else(
                || Check::ALL.into_iter().collect(),
                |c| c.into_iter().collect(),
            ),
            settle: Duration::from_secs_f64(raw.settle_s),
            expect_failovers: raw.expect_failovers.map(|v| v.into_iter().collect()),
        })
    }

    /// When the last fault heals.
    pub fn span(&self) -> Duration {
        self.faults
            .iter()
            .map(|f| f.at + f.hold)
            .max()
            .unwrap_or_default()
    }

    /// The largest clock skew any fault sets (ms, absolute).
    pub fn max_skew_ms(&self) -> u64 {
        self.faults
            .iter()
            .filter_map(|f| match f.action {
                Action::Skew { ms, .. } => Some(ms.unsigned_abs()),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

/// The occurrences of the scenario's fault `i` (0-based), checked: its
/// action against the topology, its times, its repeats.
fn occurrences(
    f: &RawFault,
    i: usize,
    path: &Path,
    topology: &Topology,
) -> Result<Vec<Fault>, ScenarioError> {
    let bad = |message: String| ScenarioError::Fault {
        path: path.to_path_buf(),
        index: i + 1,
        fault: f.action.clone(),
        message,
    };
    let action = resolve(f, topology).map_err(bad)?;
    let times = [("at_s", f.at_s), ("for_s", f.for_s)];
    for (k, v) in times
        .iter()
        .chain(f.every_s.as_ref().map(|e| ("every_s", *e)).iter())
    {
        if !v.is_finite() || *v < 0.0 {
            return Err(bad(format!(
                "{k} = {v}: must be a number of seconds, 0 or more"
            )));
        }
    }
    if f.for_s == 0.0 {
        return Err(bad(
            "for_s = 0: a fault must last a while before it heals".into()
        ));
    }
    let repeat = f.repeat.unwrap_or(1);
    if repeat == 0 || repeat > 100 {
        return Err(bad(format!("repeat = {repeat}: use 1 to 100")));
    }
    let every = match (repeat, f.every_s) {
        (1, None) => 0.0,
        (1, Some(_)) => return Err(bad("every_s needs repeat > 1".into())),
        (_, None) => return Err(bad("repeat > 1 needs every_s".into())),
        (_, Some(e)) if e < f.for_s => {
            return Err(bad(format!(
                "every_s = {e} is shorter than for_s = {}: occurrences would overlap",
                f.for_s
            )))
        }
        (_, Some(e)) => e,
    };
    Ok((0..repeat)
        .map(|k| Fault {
            at: Duration::from_secs_f64(f.at_s + every * k as f64),
            hold: Duration::from_secs_f64(f.for_s),
            action: action.clone(),
        })
        .collect())
}

fn resolve(f: &RawFault, t: &Topology) -> Result<Action, String> {
    let region = |name: &Option<String>, key: &str| -> Result<String, String> {
        let name = name
            .clone()
            .ok_or_else(|| format!("`{}` needs `{key}` (a region name)", f.action))?;
        if t.regions.iter().any(|r| r.name == name) {
            Ok(name)
        } else {
            Err(format!(
                "{key} = \"{name}\" is not a region of the topology; its regions are {}",
                t.regions
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    let node = || -> Result<NodeId, String> {
        let id = f
            .node
            .ok_or_else(|| format!("`{}` needs `node` (a node id)", f.action))?;
        if t.regions.iter().any(|r| r.nodes.iter().any(|n| n.id == id)) {
            Ok(id)
        } else {
            Err(format!("node = {id} is not a node of the topology"))
        }
    };
    let two = || -> Result<(String, String), String> {
        let (a, b) = (region(&f.a, "a")?, region(&f.b, "b")?);
        if a == b {
            return Err(format!("a and b are both \"{a}\"; name two regions"));
        }
        Ok((a, b))
    };
    // Keys the action does not take are mistakes, named here.
    let allowed: &[&str] = match f.action.as_str() {
        "kill-node" | "pause" => &["node"],
        "skew" => &["node", "ms"],
        "kill-leader" | "kill-region" | "isolate-region" => &["region"],
        "partition" => &["a", "b"],
        "delay" => &["a", "b", "ms"],
        "loss" => &["a", "b", "percent"],
        // Unknown: said below, with the list of faults.
        _ => &["node", "region", "a", "b", "ms", "percent"],
    };
    let given = [
        ("node", f.node.is_some()),
        ("region", f.region.is_some()),
        ("a", f.a.is_some()),
        ("b", f.b.is_some()),
        ("ms", f.ms.is_some()),
        ("percent", f.percent.is_some()),
    ];
    if let Some((k, _)) = given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
        return Err(format!("`{}` takes no `{k}`", f.action));
    }
    Ok(match f.action.as_str() {
        "kill-node" => Action::KillNode { node: node()? },
        "kill-leader" => Action::KillLeader {
            region: region(&f.region, "region")?,
        },
        "kill-region" => Action::KillRegion {
            region: region(&f.region, "region")?,
        },
        "isolate-region" => Action::IsolateRegion {
            region: region(&f.region, "region")?,
        },
        "partition" => {
            let (a, b) = two()?;
            Action::Partition { a, b }
        }
        "delay" => {
            let (a, b) = two()?;
            let ms = f.ms.ok_or("`delay` needs `ms` (added round trip)")?;
            if !(1..=60_000).contains(&ms) {
                return Err(format!("ms = {ms}: use 1 to 60000"));
            }
            Action::Delay {
                a,
                b,
                ms: ms as u64,
            }
        }
        "loss" => {
            let (a, b) = two()?;
            let percent = f.percent.ok_or("`loss` needs `percent` (1 to 100)")?;
            if !(1..=100).contains(&percent) {
                return Err(format!("percent = {percent}: use 1 to 100"));
            }
            Action::Loss { a, b, percent }
        }
        "skew" => {
            let ms = f.ms.ok_or("`skew` needs `ms` (ahead; negative: behind)")?;
            if ms.unsigned_abs() > 3_600_000 {
                return Err(format!("ms = {ms}: keep skews within an hour"));
            }
            Action::Skew { node: node()?, ms }
        }
        "pause" => Action::Pause { node: node()? },
        other => return Err(format!("unknown fault `{other}`; faults are {ACTIONS}")),
    })
}

/// Process faults on one node (kill, pause) must not overlap in time:
/// a node cannot be killed while it is paused or already dead.
fn overlapping_process_faults(faults: &[Fault], t: &Topology) -> Result<(), String> {
    let nodes_of = |a: &Action| -> Vec<NodeId> {
        match a {
            Action::KillNode { node } | Action::Pause { node } => vec![*node],
            Action::KillRegion { region } | Action::KillLeader { region } => t
                .regions
                .iter()
                .filter(|r| r.name == *region)
                .flat_map(|r| r.nodes.iter().map(|n| n.id))
                .collect(),
            _ => Vec::new(),
        }
    };
    for (i, x) in faults.iter().enumerate() {
        for y in &faults[i + 1..] {
            let overlap = y.at < x.at + x.hold && x.at < y.at + y.hold;
            let nx = nodes_of(&x.action);
            if overlap && nodes_of(&y.action).iter().any(|n| nx.contains(n)) {
                return Err(format!(
                    "`{}` at {} s and `{}` at {} s act on the same node at the same time",
                    x.action.describe(),
                    x.at.as_secs_f64(),
                    y.action.describe(),
                    y.at.as_secs_f64()
                ));
            }
        }
    }
    Ok(())
}

/// A point of the schedule: fault `index` starts or heals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub at: Duration,
    pub index: usize,
    pub heal: bool,
}

/// Every start and heal in time order; at one instant, heals first.
pub fn timeline(faults: &[Fault]) -> Vec<Step> {
    let mut v: Vec<Step> = faults
        .iter()
        .enumerate()
        .flat_map(|(index, f)| {
            [
                Step {
                    at: f.at,
                    index,
                    heal: false,
                },
                Step {
                    at: f.at + f.hold,
                    index,
                    heal: true,
                },
            ]
        })
        .collect();
    v.sort_by_key(|s| (s.at, !s.heal, s.index));
    v
}

/// The fault-layer state of node `node` while the network faults `active`
/// are on. Every node gets every cut, delay and loss (a relay must know
/// that its own route to the target is cut too); skews are per node.
pub fn fault_state<'a>(
    node: NodeId,
    all_regions: &[String],
    active: impl IntoIterator<Item = &'a Action>,
) -> FaultState {
    let mut s = FaultState::default();
    for a in active {
        match a {
            Action::IsolateRegion { region: r } => {
                for other in all_regions.iter().filter(|o| *o != r) {
                    s.cut.insert(pair(r, other));
                }
            }
            Action::Partition { a, b } => {
                s.cut.insert(pair(a, b));
            }
            Action::Delay { a, b, ms } => s.delay.push(ExtraDelay {
                a: a.clone(),
                b: b.clone(),
                ms: *ms,
            }),
            Action::Loss { a, b, percent } => s.loss.push(Loss {
                a: a.clone(),
                b: b.clone(),
                percent: *percent,
            }),
            Action::Skew { node: n, ms } if *n == node => s.skew_ms += ms,
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        Topology::load(&crate::config::absolute(Path::new("regions/dev.toml"))).unwrap()
    }

    fn parse(text: &str) -> Result<Scenario, String> {
        Scenario::parse(text, Path::new("t.toml"), &topo()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_scenario_parses_with_defaults_and_repeats() {
        let s = parse(
            r#"
            name = "storm"
            [[fault]]
            do = "kill-leader"
            region = "us-east"
            at_s = 2
            for_s = 3
            repeat = 3
            every_s = 5
            [[fault]]
            do = "skew"
            node = 4
            ms = -300
            at_s = 1
            for_s = 20
            "#,
        )
        .unwrap();
        assert_eq!(s.checks.len(), Check::ALL.len());
        assert_eq!(s.workload.rate, 20);
        let starts: Vec<u64> = s.faults.iter().map(|f| f.at.as_secs()).collect();
        assert_eq!(starts, vec![1, 2, 7, 12]);
        assert_eq!(s.span(), Duration::from_secs(21));
        assert_eq!(s.max_skew_ms(), 300);
    }

    #[test]
    fn mistakes_are_named_with_the_fault_and_what_to_do() {
        let cases = [
            (
                "name='x'\n[[fault]]\ndo='kill-region'\nregion='mars'\nat_s=1\nfor_s=2",
                "fault 1 (`kill-region`): region = \"mars\" is not a region of the topology; its regions are us-east, eu-west, ap-south",
            ),
            (
                "name='x'\n[[fault]]\ndo='explode'\nat_s=1\nfor_s=2",
                "unknown fault `explode`; faults are kill-node",
            ),
            (
                "name='x'\n[[fault]]\ndo='delay'\na='us-east'\nb='us-east'\nms=5\nat_s=1\nfor_s=2",
                "a and b are both \"us-east\"",
            ),
            (
                "name='x'\n[[fault]]\ndo='pause'\nnode=99\nat_s=1\nfor_s=2",
                "node = 99 is not a node",
            ),
            (
                "name='x'\n[[fault]]\ndo='pause'\nnode=1\nms=4\nat_s=1\nfor_s=2",
                "`pause` takes no `ms`",
            ),
            (
                "name='x'\n[[fault]]\ndo='kill-node'\nregion='us-east'\nat_s=1\nfor_s=2",
                "`kill-node` takes no `region`",
            ),
            (
                "name='x'\n[[fault]]\ndo='kill-node'\nnode=1\nat_s=1\nfor_s=4\nrepeat=2\nevery_s=3",
                "occurrences would overlap",
            ),
            (
                "name='x'\n[[fault]]\ndo='kill-node'\nnode=1\nat_s=1\nfor_s=0",
                "must last a while",
            ),
            (
                "name='x'\n[[fault]]\ndo='kill-node'\nnode=1\nat_s=1\nfor_s=5\n[[fault]]\ndo='kill-region'\nregion='us-east'\nat_s=3\nfor_s=5",
                "act on the same node at the same time",
            ),
            ("name='x'", "no [[fault]] tables"),
            (
                "name='x'\nchecks=['all-good']\n[[fault]]\ndo='kill-node'\nnode=1\nat_s=1\nfor_s=2",
                "unknown variant `all-good`",
            ),
            (
                "name='x'\nsurprise=1\n[[fault]]\ndo='kill-node'\nnode=1\nat_s=1\nfor_s=2",
                "unknown field `surprise`",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}\n=> {e}\nwanted {want}");
            assert!(e.starts_with("t.toml"), "{e}");
        }
    }

    #[test]
    fn checks_are_named_as_in_scenario_files() {
        assert_eq!(Check::SyncAcksKept.name(), "sync-acks-kept");
        let names: BTreeSet<String> = Check::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Check::ALL.len());
        for n in &names {
            let text =
                format!("name='x'\nchecks=['{n}']\n[[fault]]\ndo='pause'\nnode=1\nat_s=1\nfor_s=2");
            assert_eq!(parse(&text).unwrap().checks.len(), 1, "{n}");
        }
    }

    #[test]
    fn heals_come_before_starts_at_one_instant() {
        let f = |at: u64, hold: u64| Fault {
            at: Duration::from_secs(at),
            hold: Duration::from_secs(hold),
            action: Action::Pause { node: 1 },
        };
        let t = timeline(&[f(0, 5), f(5, 5)]);
        let got: Vec<(u64, usize, bool)> = t
            .iter()
            .map(|s| (s.at.as_secs(), s.index, s.heal))
            .collect();
        assert_eq!(
            got,
            vec![(0, 0, false), (5, 0, true), (5, 1, false), (10, 1, true)]
        );
    }

    #[test]
    fn fault_states_combine_the_active_network_faults() {
        let regions: Vec<String> = ["us-east", "eu-west", "ap-south"]
            .map(String::from)
            .to_vec();
        let isolate = Action::IsolateRegion {
            region: "eu-west".into(),
        };
        let skew = Action::Skew { node: 4, ms: 250 };
        let delay = Action::Delay {
            a: "us-east".into(),
            b: "ap-south".into(),
            ms: 100,
        };
        let s4 = fault_state(4, &regions, [&isolate, &skew, &delay]);
        assert_eq!(s4.skew_ms, 250);
        assert_eq!(
            s4.cut,
            [pair("eu-west", "us-east"), pair("eu-west", "ap-south")]
                .into_iter()
                .collect()
        );
        assert_eq!(s4.delay.len(), 1);
        // Skew is per node; cuts and delays are for everyone.
        let s1 = fault_state(1, &regions, [&isolate, &skew, &delay]);
        assert_eq!(s1.skew_ms, 0);
        assert_eq!(s1.cut, s4.cut);
        assert_eq!(fault_state(1, &regions, []), FaultState::default());
    }
}
