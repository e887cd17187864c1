//! Every scenario in chaos/ through `meridian chaos run`: each starts its own
//! three-region dev cluster, injects its faults, heals them and checks its
//! invariants; the command exits non-zero on any broken one
//! (`chaos::check` unit tests show each check fails when its invariant
//! breaks). The scenarios run one at a time: nine nodes each, on two cores.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{free_port_base, repo, EXE};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `meridian chaos run chaos/{name}.toml` in its own process group
/// (so that every node it started dies with it, whatever happens) and
/// returns its JSON report.
fn chaos(name: &str) -> serde_json::Value {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let base = free_port_base(3 * 9);
    let mut child = Command::new(EXE)
        .current_dir(repo())
        .args(["chaos", "run"])
        .arg(format!("chaos/{name}.toml"))
        .arg("--port-base")
        .arg(base.to_string())
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start meridian chaos run");
    let pgid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(300);
    let timed_out = loop {
        if let Ok(Some(_)) = child.try_wait() {
            break false;
        }
        if Instant::now() > deadline {
            break true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Nodes left behind by a crash or a time-out die with the group.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !timed_out,
        "chaos run {name} did not finish within 300 s\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "chaos run {name} failed:\n{stdout}\n{stderr}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON report")).unwrap();
    assert_eq!(r["passed"], true, "{r}");
    let checks = r["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 8, "every invariant is checked: {r}");
    assert!(checks.iter().all(|c| c["passed"] == true), "{r}");
    for t in r["topics"].as_array().unwrap() {
        assert!(
            t["acknowledged"].as_u64().unwrap() > 200,
            "the workload wrote too little to prove anything: {t}"
        );
    }
    assert!(r["kept"].is_null(), "a passing run removes its directory");
    r
}

fn failed_over(r: &serde_json::Value) -> Vec<String> {
    r["seals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["region"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn region_loss() {
    let r = chaos("region-loss");
    assert_eq!(failed_over(&r), vec!["us-east"]);
}

#[test]
fn region_isolation_and_return() {
    let r = chaos("region-isolation-and-return");
    assert_eq!(failed_over(&r), vec!["eu-west"]);
}

#[test]
fn link_partition() {
    let r = chaos("link-partition");
    assert!(failed_over(&r).is_empty(), "{r}");
}

#[test]
fn leader_kill_storm() {
    chaos("leader-kill-storm");
}

#[test]
fn clock_skew() {
    chaos("clock-skew");
}

#[test]
fn wan_latency_spike() {
    let r = chaos("wan-latency-spike");
    assert!(failed_over(&r).is_empty(), "{r}");
}

#[test]
fn every_shipped_scenario_is_tested_here() {
    let mut shipped: Vec<String> = std::fs::read_dir(repo().join("chaos"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "toml")
                .then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    shipped.sort();
    let tested = [
        "clock-skew",
        "leader-kill-storm",
        "link-partition",
        "region-isolation-and-return",
        "region-loss",
        "wan-latency-spike",
    ];
    assert_eq!(shipped, tested, "add a test for each new scenario");
}

#[test]
fn bad_scenarios_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = 'x'\n[[fault]]\ndo = 'kill-region'\nregion = 'mars'\nat_s = 1\nfor_s = 2\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(EXE)
            .current_dir(repo())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let bad = bad.to_str().unwrap();
    for args in [
        vec!["chaos", "check", bad],
        vec!["chaos", "run", bad, "--port-base", "1"],
    ] {
        let (code, err) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains("fault 1 (`kill-region`): region = \"mars\" is not a region"),
            "{err}"
        );
    }
    // The shipped ones are all valid.
    let mut args = vec!["chaos".to_string(), "check".to_string()];
    for e in std::fs::read_dir(repo().join("chaos")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            args.push(p.display().to_string());
        }
    }
    let out = Command::new(EXE)
        .current_dir(repo())
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
