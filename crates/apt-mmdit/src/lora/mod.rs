//! LoRA (Hu et al. 2021) on the models' linear layers, in PEFT's and diffusers' layout.
//!
//! A targeted linear layer `y = x Wᵀ + b` gains `s · (dropout(x) Aᵀ) Bᵀ` with
//! `A` `[r, in]` (PEFT's Kaiming-uniform init) and `B` `[out, r]` (zeros, so a fresh adapter
//! leaves the model as it was) and `s = alpha / r`. Its variables sit under the layer's own
//! path: `<module>.lora_A.weight`, `<module>.lora_B.weight`, the names PEFT gives them.
//!
//! Adapters are attached while a model is built inside [`with_lora`]. Every [`linear`] the
//! constructors create is matched against the targets as PEFT matches `target_modules`: the
//! module's name equals a target or ends with `.target`. A target that matches nothing is an
//! error ([`with_lora`] returns the matched modules).
//!
//! On disk an adapter file is what diffusers' `save_lora_weights` writes and
//! `load_lora_weights` reads: `transformer.<module>.lora_A.weight` / `.lora_B.weight` (fp32)
//! and, in the safetensors metadata, `lora_adapter_metadata` with PEFT's config
//! (`transformer.r`, `transformer.lora_alpha`, `transformer.target_modules`, …). A file
//! without it has scale 1, as diffusers assumes. See [`save_adapter_file`],
//! [`merge_adapter_file`] and [`merged_weights`].

mod file;

use std::cell::RefCell;

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

use crate::error::{config_error, MmditError, Result};

pub use file::{is_adapter_variable, merge_adapter_file, merged_weights, save_adapter_file};

/// The key prefix of the model's tensors in a diffusers LoRA file.
pub const TRANSFORMER_PREFIX: &str = "transformer.";

/// LoRA settings (`[<stage>.lora]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r` of every adapter.
    pub rank: usize,
    /// `alpha` (scale `alpha / r`); default `r` (scale 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Dropout on the adapter's input while training (PEFT's `lora_dropout`); 0 by default.
    #[serde(default)]
    pub dropout: f64,
    /// Target modules by diffusers name, PEFT's rule: a module matches when its name equals a
    /// target or ends with `.` + target (`"to_q"`, `"attn1.to_out.0"`, `"ffn.net.2"`).
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// The adapter scale `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha.unwrap_or(self.rank as f64) / self.rank as f64
    }

    /// Checks the values; `key` prefixes the field names in errors.
    pub fn validate(&self, key: &str) -> Result<()> {
        if self.rank == 0 {
            return Err(config_error(&format!("{key}.rank"), "must be at least 1"));
        }
        if let Some(a) = self.alpha {
            if !(a.is_finite() && a > 0.0) {
                return Err(config_error(
                    &format!("{key}.alpha"),
                    format!("must be a positive number, got {a}"),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(config_error(
                &format!("{key}.dropout"),
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        if self.targets.is_empty() || self.targets.iter().any(|t| t.trim().is_empty()) {
            return Err(config_error(
                &format!("{key}.targets"),
                "must name at least one module (e.g. [\"to_q\", \"to_k\", \"to_v\", \"to_out.0\"])",
            ));
        }
        Ok(())
    }

    /// Whether the module `name` (a dotted diffusers name) is a target.
    pub fn matches(&self, name: &str) -> bool {
        self.targets
            .iter()
            .any(|t| name == t || name.ends_with(&format!(".{t}")))
    }
}

/// One adapter: `s · (dropout(x) Aᵀ) Bᵀ`.
#[derive(Debug)]
pub struct Adapter {
    /// `A` `[r, in]`.
    pub a: Tensor,
    /// `B` `[out, r]`.
    pub b: Tensor,
    /// `alpha / r`.
    pub scale: f64,
    dropout: f64,
}

impl Adapter {
    /// The adapter's output for `x` `[…, in]`. Dropout applies only while `A` is being trained
    /// (gradients on and `A` requiring them).
    pub fn delta(&self, x: &Tensor) -> Tensor {
        let training = self.dropout > 0.0 && self.a.narrow(0, 0, 1).requires_grad();
        let x = if training {
            x.dropout(self.dropout, true)
        } else {
            x.shallow_clone()
        };
        x.linear(&self.a.to_kind(x.kind()), None::<&Tensor>)
            .linear(&self.b.to_kind(x.kind()), None::<&Tensor>)
            * self.scale
    }
}

/// A linear layer with an optional [`Adapter`] (what every linear layer of the models is).
#[derive(Debug)]
pub struct Linear {
    /// Weight `[out, in]`.
    pub ws: Tensor,
    /// Bias `[out]`.
    pub bs: Option<Tensor>,
    /// The adapter, when the layer is a LoRA target.
    pub adapter: Option<Adapter>,
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear(&self.ws, self.bs.as_ref());
        match &self.adapter {
            Some(a) => y + a.delta(x),
            None => y,
        }
    }
}

struct Plan {
    cfg: LoraConfig,
    matched: Vec<String>,
}

thread_local! {
    static PLAN: RefCell<Option<Plan>> = const { RefCell::new(None) };
}

/// Runs `build` (a model's constructor) with adapters attached to every [`linear`] that
/// `cfg` targets; returns its result and the adapted modules' names, sorted. Errors when a
/// target matches no module.
pub fn with_lora<T, E: From<MmditError>>(
    cfg: &LoraConfig,
    build: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<(T, Vec<String>), E> {
    cfg.validate("lora")?;
    PLAN.with(|p| {
        *p.borrow_mut() = Some(Plan {
            cfg: cfg.clone(),
            matched: vec![],
        })
    });
    let built = build();
    let mut matched = PLAN.with(|p| p.borrow_mut().take().map(|p| p.matched).unwrap_or_default());
    let built = built?;
    matched.sort();
    for target in &cfg.targets {
        let single = LoraConfig {
            targets: vec![target.clone()],
            ..cfg.clone()
        };
        if !matched.iter().any(|m| single.matches(m)) {
            return Err(config_error(
                "lora.targets",
                format!("{target:?} matches no linear layer of the model"),
            )
            .into());
        }
    }
    Ok((built, matched))
}

/// A linear layer at `p` (`p/weight`, `p/bias`), with an adapter under `p/lora_A`, `p/lora_B`
/// when built inside [`with_lora`] and `p` is a target.
pub fn linear(p: nn::Path, input: i64, output: i64, config: nn::LinearConfig) -> Linear {
    let base = nn::linear(&p, input, output, config);
    let name: Vec<&str> = p.components().collect();
    let name = name.join(".");
    let adapter = PLAN.with(|plan| {
        let mut plan = plan.borrow_mut();
        let plan = plan.as_mut()?;
        if !plan.cfg.matches(&name) {
            return None;
        }
        plan.matched.push(name.clone());
        let r = plan.cfg.rank as i64;
        let bound = 1.0 / (input as f64).sqrt();
        Some(Adapter {
            a: (&p / "lora_A").var(
                "weight",
                &[r, input],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            b: (&p / "lora_B").var("weight", &[output, r], nn::Init::Const(0.0)),
            scale: plan.cfg.scale(),
            dropout: plan.cfg.dropout,
        })
    });
    Linear {
        ws: base.ws,
        bs: base.bs,
        adapter,
    }
}
