//! `apt eval --run DIR`: every generator a run has produced, on the same prompts and noise;
//! writes `metrics.json`, `report.md` and its plots and GIFs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use apt_flow::RunConfig;
use clap::Args;

/// Arguments of `apt eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// The run directory (holds config.toml, written by `apt train`).
    #[arg(long)]
    run: PathBuf,
}

/// Evaluates and writes the report.
pub fn run(args: EvalArgs) -> Result<()> {
    let config = args.run.join("config.toml");
    let mut run = RunConfig::from_file(&config)
        .with_context(|| format!("{} is not a run directory", args.run.display()))?;
    // The run may have been moved since it was trained.
    run.out = args.run.clone();
    let path = crate::report::evaluate_and_write(&run)?;
    println!("report      {}", path.display());
    Ok(())
}
