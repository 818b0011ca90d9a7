//! `apt text …`: caption embeddings with the frozen MiniLM encoder.

use std::path::PathBuf;

use anyhow::Result;
use apt_data::TextEncoder;
use clap::Subcommand;

/// Subcommands of `apt text`.
#[derive(Subcommand)]
pub enum TextCommand {
    /// Write `context` [L, 384] (last-layer token states, special tokens included) and `pooled`
    /// [384] (mean pooling, before any normalisation) for a caption, as safetensors.
    Embed {
        /// The caption ("" gives the CFG null condition).
        #[arg(long)]
        caption: String,
        /// Output file (.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Encoder directory (config.json, tokenizer.json, model.safetensors); default: the
        /// all-MiniLM-L6-v2 fetched by `cargo xtask setup`.
        #[arg(long)]
        encoder: Option<PathBuf>,
    },
}

/// Dispatches `apt text …`.
pub fn run(command: TextCommand) -> Result<()> {
    match command {
        TextCommand::Embed {
            caption,
            out,
            encoder,
        } => {
            let encoder = match encoder {
                Some(dir) => TextEncoder::load(&dir, tch::Device::Cpu)?,
                None => TextEncoder::minilm(tch::Device::Cpu)?,
            };
            let e = encoder.encode(&caption)?;
            tch::Tensor::write_safetensors(&[("context", &e.context), ("pooled", &e.pooled)], &out)
                .map_err(|err| anyhow::anyhow!("{}: {err}", out.display()))?;
            println!(
                "{} tokens -> context {:?}, pooled {:?} in {}",
                e.context.size()[0],
                e.context.size(),
                e.pooled.size(),
                out.display()
            );
            Ok(())
        }
    }
}
