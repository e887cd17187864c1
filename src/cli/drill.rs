//! `meridian drill`: fail a region under a verification workload and
//! fail it back.

use super::write_json;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

pub(super) async fn run_drill(
    plan: meridian::ops::drill::Plan,
    json: Option<PathBuf>,
    md: Option<PathBuf>,
) -> Result<()> {
    use meridian::ops::drill::report;
    let r = meridian::ops::drill::run(plan).await?;
    print!("{}", report::text(&r));
    if let Some(path) = json {
        write_json(&path, &r)?;
    }
    if let Some(path) = md {
        std::fs::write(&path, report::markdown(&r))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if !r.passed() {
        bail!("the drill found broken invariants (see above)");
    }
    Ok(())
}
