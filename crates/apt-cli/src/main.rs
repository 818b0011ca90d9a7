//! `apt`: the apt-rs command line.

mod data_cmd;
mod doctor;
mod dry_run;
mod encode_cmd;
mod eval_cmd;
mod gan_cmd;
mod log_file;
mod model_cmd;
mod progress;
mod sample_cmd;
mod study_cmd;
mod text_cmd;
mod train_cmd;
mod vae_cmd;

use std::io::IsTerminal;
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
    /// Evaluate every generator of a run (teacher, distilled, APT) on the same prompts.
    Eval(eval_cmd::EvalArgs),
    /// Generate a video from a prompt (one step by default).
    Sample(sample_cmd::SampleArgs),
    /// Train the pipeline (or one stage of it) from a run config.
    Train(train_cmd::TrainArgs),
    /// Ablation study of the adversarial stage: variants × seeds from one shared init.
    Study(study_cmd::StudyArgs),
    /// Data tools: inspect a video or image file, write moving shapes, encode videos to latents.
    Data {
        #[command(subcommand)]
        command: data_cmd::DataCommand,
    },
    /// GAN tools: parity with the source article's conditional WGAN-GP.
    Gan {
        #[command(subcommand)]
        command: gan_cmd::GanCommand,
    },
    /// Text tools: embed a caption with the frozen MiniLM encoder.
    Text {
        #[command(subcommand)]
        command: text_cmd::TextCommand,
    },
    /// Model tools: sizes and FLOPs, diffusers parity.
    Model {
        #[command(subcommand)]
        command: model_cmd::ModelCommand,
    },
    /// VAE tools: diffusers parity (Wan 2.1 video VAE, SD3/FLUX image VAE), throughput.
    Vae {
        #[command(subcommand)]
        command: vae_cmd::VaeCommand,
    },
}

fn main() -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours for a terminal only: a file or pipe gets plain text.
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(|| log_file::LogFileWriter)
                .with_ansi(false)
                .with_target(false),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor => doctor::run(),
        Command::Data { command } => data_cmd::run(command),
        Command::Train(args) => match train_cmd::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Sample(args) => match sample_cmd::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Study(args) => match study_cmd::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Eval(args) => match eval_cmd::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Model { command } => model_cmd::run(command),
        Command::Vae { command } => vae_cmd::run(command),
        Command::Gan { command } => gan_cmd::run(command),
        Command::Text { command } => text_cmd::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what went wrong and where (the chain joined, skipping causes the
            // message already quotes), no backtrace.
            let mut line = String::new();
            for cause in e.chain().map(|c| c.to_string()) {
                if !line.contains(&cause) {
                    if !line.is_empty() {
                        line.push_str(": ");
                    }
                    line.push_str(&cause);
                }
            }
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}
