//! `apt gan …`.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Subcommand;

/// Subcommands of `apt gan`.
#[derive(Subcommand)]
pub enum GanCommand {
    /// Recompute a seed-GAN fixture with our code in seed-compatible mode; the last line is the
    /// max abs difference.
    SeedParity {
        /// safetensors with the seed modules' `gen.*` / `dis.*` weights, inputs and outputs.
        #[arg(long)]
        fixture: PathBuf,
    },
}

/// Dispatches `apt gan …`.
pub fn run(command: GanCommand) -> Result<()> {
    match command {
        GanCommand::SeedParity { fixture } => {
            let p = apt_gan::seed_gan::run_seed_parity(&fixture).map_err(|e| anyhow!(e))?;
            let c = p.config;
            println!("seed GAN      in_size {}, cond_in {}, latent_s {}, width {}, layers {}, lambda_gp {}", c.in_size, c.cond_in, c.latent_s, c.width, c.layers, c.lambda_gp);
            println!("max abs difference: {:e}", p.max_abs_diff);
            Ok(())
        }
    }
}
