//! `apt text …`: caption embeddings with the frozen MiniLM encoder; text-encoder parity.

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
    /// Compare our text encoder with transformers' on a recorded input: UMT5's encoder (Wan
    /// 2.1) or BERT (MiniLM), as the directory's config.json says; the last line is the max
    /// abs difference.
    Parity {
        /// A transformers model directory (config.json + safetensors).
        #[arg(long)]
        transformers: PathBuf,
        /// safetensors with `input_ids`, `attention_mask` and the expected `last_hidden_state`.
        #[arg(long)]
        fixture: PathBuf,
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
        TextCommand::Parity {
            transformers,
            fixture,
        } => {
            let p = apt_data::text::parity::run_parity(&transformers, &fixture)?;
            println!(
                "encoder       {} ({}) -> last hidden state {:?}",
                transformers.display(),
                p.model_type,
                p.shape
            );
            println!("max abs difference: {:e}", p.max_abs_diff);
            Ok(())
        }
    }
}
