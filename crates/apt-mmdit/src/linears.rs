//! Every linear layer of a model, by diffusers name with its `(in, out)` widths, in closed
//! form from the config (no model is built, so the 14B can be sized anywhere): what LoRA
//! adapts and what its adapters cost.

use crate::embeddings::TIMESTEP_FEATURES;
use crate::family::ModelConfig;

/// `(module name, in features, out features)` of every linear layer of a model of `cfg`,
/// sorted by name.
pub fn linear_layers(cfg: &ModelConfig) -> Vec<(String, usize, usize)> {
    let mut out: Vec<(String, usize, usize)> = vec![];
    let mut add = |name: String, i: usize, o: usize| out.push((name, i, o));
    match cfg {
        ModelConfig::Mmdit(c) => {
            let d = c.hidden_size();
            let ff = c.mlp_ratio * d;
            add("context_embedder".into(), c.context_dim, d);
            add("norm_out.linear".into(), d, 2 * d);
            add("proj_out".into(), d, c.patch_out_dim());
            add(
                "time_text_embed.text_embedder.linear_1".into(),
                c.pooled_dim,
                d,
            );
            add("time_text_embed.text_embedder.linear_2".into(), d, d);
            add(
                "time_text_embed.timestep_embedder.linear_1".into(),
                TIMESTEP_FEATURES as usize,
                d,
            );
            add("time_text_embed.timestep_embedder.linear_2".into(), d, d);
            for i in 0..c.depth {
                let last = i + 1 == c.depth;
                let b = format!("transformer_blocks.{i}");
                for p in [
                    "to_q",
                    "to_k",
                    "to_v",
                    "to_out.0",
                    "add_q_proj",
                    "add_k_proj",
                    "add_v_proj",
                ] {
                    add(format!("{b}.attn.{p}"), d, d);
                }
                add(format!("{b}.ff.net.0.proj"), d, ff);
                add(format!("{b}.ff.net.2"), ff, d);
                add(format!("{b}.norm1.linear"), d, 6 * d);
                add(
                    format!("{b}.norm1_context.linear"),
                    d,
                    if last { 2 } else { 6 } * d,
                );
                if !last {
                    add(format!("{b}.attn.to_add_out"), d, d);
                    add(format!("{b}.ff_context.net.0.proj"), d, ff);
                    add(format!("{b}.ff_context.net.2"), ff, d);
                }
            }
        }
        ModelConfig::Wan(c) => {
            let d = c.hidden_size();
            let e = "condition_embedder";
            add(format!("{e}.text_embedder.linear_1"), c.text_dim, d);
            add(format!("{e}.text_embedder.linear_2"), d, d);
            add(format!("{e}.time_embedder.linear_1"), c.freq_dim, d);
            add(format!("{e}.time_embedder.linear_2"), d, d);
            add(format!("{e}.time_proj"), d, 6 * d);
            add("proj_out".into(), d, c.patch_out_dim());
            for i in 0..c.num_layers {
                for attn in ["attn1", "attn2"] {
                    for p in ["to_q", "to_k", "to_v", "to_out.0"] {
                        add(format!("blocks.{i}.{attn}.{p}"), d, d);
                    }
                }
                add(format!("blocks.{i}.ffn.net.0.proj"), d, c.ffn_dim);
                add(format!("blocks.{i}.ffn.net.2"), c.ffn_dim, d);
            }
        }
    }
    out.sort();
    out
}

/// Parameters of `lora`'s adapters on a model of `cfg`: `r · (in + out)` per targeted layer.
pub fn lora_parameter_count(cfg: &ModelConfig, lora: &crate::lora::LoraConfig) -> u64 {
    linear_layers(cfg)
        .iter()
        .filter(|(name, _, _)| lora.matches(name))
        .map(|(_, i, o)| (lora.rank * (i + o)) as u64)
        .sum()
}
