//! `apt gan …`.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Subcommand;

/// Subcommands of `apt gan`.
#[derive(Subcommand)]
pub enum GanCommand {
    /// Recompute a fixture of the source article's WGAN-GP (scripts/make_seed_gan_fixture.py)
    /// with our code in article-compatible mode; the last line is the max abs difference.
    #[command(alias = "seed-parity")]
    WganGpParity {
        /// safetensors with the article's modules' `state_dict` (`gen.0.weight`, …, `dis.0.weight`,
        /// …), inputs and outputs.
        #[arg(long)]
        fixture: PathBuf,
    },
    /// Train the article's WGAN-GP on synthetic PV-like profiles and print the energy score / CRPS curve.
    Scenarios {
        /// Config (see configs/wgan-gp-pv.toml).
        #[arg(long)]
        config: PathBuf,
        /// Where to write the report (JSON).
        #[arg(long, default_value = "runs/wgan-gp-pv/report.json")]
        out: PathBuf,
    },
}

/// Dispatches `apt gan …`.
pub fn run(command: GanCommand) -> Result<()> {
    match command {
        GanCommand::WganGpParity { fixture } => {
            let p = apt_gan::wgan_gp::gan::run_parity(&fixture).map_err(|e| anyhow!(e))?;
            let c = p.config;
            println!("WGAN-GP       in_size {}, cond_in {}, latent_s {}, width {}, layers {}, lambda_gp {}", c.in_size, c.cond_in, c.latent_s, c.width, c.layers, c.lambda_gp);
            println!("max abs difference: {:e}", p.max_abs_diff);
            Ok(())
        }
        GanCommand::Scenarios { config, out } => {
            let text = std::fs::read_to_string(&config)
                .map_err(|e| anyhow!("{}: {e}", config.display()))?;
            let cfg: apt_gan::wgan_gp::scenarios::ScenarioConfig =
                toml::from_str(&text).map_err(|e| {
                    anyhow!(
                        "{}: {}",
                        config.display(),
                        e.to_string().trim().replace('\n', " ")
                    )
                })?;
            println!("{:>8} {:>14} {:>10}", "step", "energy score", "CRPS");
            let report = apt_gan::wgan_gp::scenarios::train_scenarios(&cfg, |s| {
                println!("{:>8} {:>14.4} {:>10.4}", s.step, s.energy_score, s.crps)
            })
            .map_err(|e| anyhow!(e))?;
            println!(
                "{:>8} {:>14.4} {:>10.4}",
                "truth", report.oracle.energy_score, report.oracle.crps
            );
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
            println!("report        {}", out.display());
            Ok(())
        }
    }
}
