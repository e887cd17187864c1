//! The layer order of `src/` (docs/architecture.md, "Layers"): a module
//! may import only modules on its own floor or below. Checked: every
//! `crate::` path outside comments, in every file but the crate roots
//! (`lib.rs`, `main.rs`), and every `meridian::` path (how the binary's
//! `cli/` names the library). Not checked: `super::super::` paths that
//! climb to the crate root (none exist). An upward import that must stay
//! for a while is listed in `KNOWN_UPWARD` with what will remove it; the
//! test fails on any other upward import, and on a listed one that is gone
//! (so the list only shrinks). It is empty: no import goes upward.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Floors, bottom first. A module is a top-level file or folder of `src/`.
const FLOORS: &[&[&str]] = &[
    &["ids", "hlc", "metrics"],
    &["supervise", "view", "meta", "log"],
    &["command", "config"],
    &["transport"],
    &["storage"],
    &["raft"],
    &["link"],
    &["control"],
    &["router"],
    &["rpc"],
    &["group"],
    &["kafka"],
    &["admin"],
    &["node"],
    &["client"],
    &["ops"],
    &["cli"],
];

/// Upward imports that exist today, `(importer, imported)`, and what
/// removes each (issue 17, the layout).
const KNOWN_UPWARD: &[(&str, &str)] = &[];

fn floor(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `text` without its `//` comments (doc comments included), which may
/// name modules without importing them.
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a source file names through `crate::` paths, including
/// `use crate::{a, b::{c, d}}` groups (the first segment of each item),
/// and through `meridian::` paths (the binary's `cli/` uses the library by
/// its name).
fn imported(text: &str) -> BTreeSet<String> {
    let text = without_comments(text);
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let paths = text
        .match_indices("crate::")
        .map(|(i, p)| i + p.len())
        .chain(
            text.match_indices("meridian::")
                .filter(|(i, _)| {
                    !text[..*i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                })
                .map(|(i, p)| i + p.len()),
        )
        .collect::<Vec<_>>();
    for start in paths {
        let rest = &text[start..];
        if let Some(group) = rest.strip_prefix('{') {
            // Items at depth 0 of the group, each up to its comma.
            let (mut depth, mut start) = (0usize, 0usize);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.insert(ident(group[start..j].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(group[start..j].trim()));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.remove(""); // `crate::*`, or a trailing comma
    out.remove("self");
    out
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut unplaced = BTreeSet::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "main" || module == "lib" {
            continue; // crate roots: the binary and the module list
        }
        let Some(own) = floor(&module) else {
            unplaced.insert(module);
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        for target in imported(&text) {
            if target == module {
                continue;
            }
            match floor(&target) {
                None => {
                    unplaced.insert(target);
                }
                Some(t) if t > own => upward
                    .entry((module.clone(), target))
                    .or_default()
                    .push(rel.display().to_string()),
                Some(_) => {}
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules on no floor of FLOORS: {unplaced:?}; place each in tests/layers.rs and docs/architecture.md"
    );
    let known: BTreeSet<(String, String)> = KNOWN_UPWARD
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<String> = upward
        .iter()
        .filter(|(k, _)| !known.contains(*k))
        .map(|((a, b), files)| format!("{a} imports {b} (above it) in {}", files.join(", ")))
        .collect();
    assert!(
        new.is_empty(),
        "imports upward in the layer order:\n{}",
        new.join("\n")
    );
    let gone: Vec<&(String, String)> = known.iter().filter(|k| !upward.contains_key(*k)).collect();
    assert!(
        gone.is_empty(),
        "no longer imported upward, remove from KNOWN_UPWARD: {gone:?}"
    );
}

#[test]
fn the_scanner_sees_paths_and_groups() {
    let names = imported(
        "use crate::config::{A, B};\nuse crate::{storage, ids::{LogRef, NodeId}, view::merge,};\n\
         let x = crate::ids::origin_id(r); // not crate::router\n/// nor crate::node\n\
         use meridian::ops::dev; let y = xmeridian::kafka::z;",
    );
    let want: BTreeSet<String> = ["config", "storage", "view", "ids", "ops"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, want);
}
