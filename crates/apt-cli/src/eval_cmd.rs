//! `apt eval --run DIR`: every generator a run has produced, on the same prompts and noise;
//! writes `metrics.json`, `report.md` and its plots and GIFs. The run directory is locked
//! while it runs; Ctrl-C stops before anything is written (exit 130).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use apt_pipeline::report::{evaluate_and_write, table};
use apt_pipeline::OpenRun;
use clap::Args;

use crate::progress::{bar, stop_flag};

/// Arguments of `apt eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// The run directory (holds config.toml, written by `apt train`).
    #[arg(long)]
    run: PathBuf,
    /// cpu, cuda or cuda:N (default: the run's `device`).
    #[arg(long)]
    device: Option<String>,
}

/// Evaluates and writes the report.
pub fn run(args: EvalArgs) -> Result<ExitCode> {
    let mut open = OpenRun::for_evaluation(&args.run)?;
    if let Some(device) = args.device {
        apt_pipeline::config::parse_device(&device)?;
        open.config.device = device;
    }
    apt_pipeline::preflight::check_device(open.config.device()?, "device")
        .map_err(|e| anyhow::anyhow!("{e} (pass --device cpu to evaluate here)"))?;
    crate::log_file::open(&open.dir.log_file())?;
    let stop = stop_flag()?;
    let eval_bar = bar(0, "evaluate");
    let written = evaluate_and_write(&open.config, &open.dir, &stop, |done, total, name| {
        eval_bar.set_length(total as u64);
        eval_bar.set_position(done as u64);
        eval_bar.set_message(name.to_string());
    });
    eval_bar.finish_and_clear();
    match written {
        Ok((path, metrics)) => {
            if !metrics.models.is_empty() {
                print!("{}", table(&metrics.models));
            }
            println!("report      {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_interrupted() => {
            println!("evaluation stopped before writing anything");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e.into()),
    }
}
