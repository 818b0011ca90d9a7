//! `apt`: the apt-rs command line.

mod doctor;
mod model_cmd;
mod train_smoke;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// apt-rs: adversarial post-training of video diffusion transformers (one-step generation).
#[derive(Parser)]
#[command(name = "apt", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report libtorch (version, path), threads, CUDA devices and bf16 support.
    Doctor,
    /// Model tools: sizes and FLOPs, diffusers parity, a short real training run.
    Model {
        #[command(subcommand)]
        command: model_cmd::ModelCommand,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor => doctor::run(),
        Command::Model { command } => model_cmd::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what went wrong and where (the chain joined), no backtrace.
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
