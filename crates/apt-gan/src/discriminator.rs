//! APT's discriminator (spec §5): a diffusion backbone (the MMDiT or Wan 2.1, through
//! [`apt_mmdit::Model`]) initialised from the diffusion (teacher)
//! weights, all trainable, run up to its deepest tap; at each tap layer a cross-attention-only
//! head whose single learnable token attends to all visual tokens; the head outputs are
//! concatenated, LayerNorm'ed and projected to one logit.
//!
//! Shape-agnostic: heads see `[B, N, D]` for any N. The real or generated clip goes in as it
//! is (no noise; [`crate::adversarial::DiscriminatorInputs`] has the options); only the
//! timestep given to D is random, `t ~ shift(U(0, 1), s)` per sample by default, and D sees the
//! text condition.

use apt_flow::error::config_error;
use apt_flow::{TensorRng, TimeDistribution, TimestepSampler};
use apt_mmdit::attention::{attention, RmsNorm};
use apt_mmdit::{Model, ModelConfig};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

/// Discriminator options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscriminatorConfig {
    /// Tap layers (1-based block numbers); default ≈ 44%, 72%, 100% of the depth
    /// (16, 26, 36 of 36).
    #[serde(default)]
    pub taps: Option<Vec<usize>>,
    /// Shift `s` of D's timestep distribution `shift(U(0, 1), s)`: the paper's 12 for video
    /// ([`VIDEO_TIME_SHIFT`], the default) and 1 for images ([`IMAGE_TIME_SHIFT`]). Ignored
    /// when `times` is set.
    #[serde(default = "default_shift")]
    pub time_shift: f64,
    /// Another distribution of D's timesteps (default: `shift(U(0, 1), time_shift)`): an
    /// explicit [`TimestepSampler`] (e.g. APT2's `U(0, 1)` without a shift), or `"teacher"` for
    /// the teacher's own training distribution (where its features were learnt).
    #[serde(default)]
    pub times: Option<DiscriminatorTimes>,
}

/// D's timestep distribution, when not the shifted uniform of `time_shift`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DiscriminatorTimes {
    /// `"teacher"`: the teacher's pre-training distribution (resolved by whoever knows it,
    /// with [`DiscriminatorConfig::with_teacher_times`]).
    Named(NamedTimes),
    /// An explicit sampler.
    Sampler(TimestepSampler),
}

/// Named time distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NamedTimes {
    /// The teacher's pre-training distribution.
    Teacher,
}

/// D's time shift of the paper's video stage.
pub const VIDEO_TIME_SHIFT: f64 = 12.0;
/// D's time shift of the paper's image stage.
pub const IMAGE_TIME_SHIFT: f64 = 1.0;

fn default_shift() -> f64 {
    VIDEO_TIME_SHIFT
}

impl DiscriminatorConfig {
    /// Checks the values for a backbone of `depth` blocks; `key` prefixes the field names in
    /// errors (`""`: the field names alone).
    pub fn validate(&self, key: &str, depth: usize) -> apt_flow::Result<()> {
        let at = |field: &str| match key {
            "" => field.to_string(),
            _ => format!("{key}.{field}"),
        };
        if !(self.time_shift.is_finite() && self.time_shift > 0.0) {
            return Err(config_error(
                &at("time_shift"),
                format!("must be a positive number, got {}", self.time_shift),
            ));
        }
        if let Some(DiscriminatorTimes::Sampler(sampler)) = &self.times {
            sampler.validate(&at("times"))?;
        }
        if let Some(taps) = &self.taps {
            if taps.is_empty() || taps.iter().any(|&k| k == 0 || k > depth) {
                return Err(config_error(
                    &at("taps"),
                    format!("must be block numbers in 1..={depth}, got {taps:?}"),
                ));
            }
        }
        Ok(())
    }
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        Self {
            taps: None,
            time_shift: default_shift(),
            times: None,
        }
    }
}

impl DiscriminatorConfig {
    /// `times = "teacher"` replaced by the teacher's sampler (other settings unchanged).
    pub fn with_teacher_times(&self, teacher: &TimestepSampler) -> Self {
        let mut cfg = self.clone();
        if cfg.times == Some(DiscriminatorTimes::Named(NamedTimes::Teacher)) {
            cfg.times = Some(DiscriminatorTimes::Sampler(*teacher));
        }
        cfg
    }

    /// D's timestep sampler: `times`, or `shift(U(0, 1), time_shift)`. Errors on an
    /// unresolved `"teacher"`.
    pub fn time_sampler(&self) -> apt_flow::Result<TimestepSampler> {
        match self.times {
            None => Ok(TimestepSampler {
                distribution: TimeDistribution::Uniform,
                shift: self.time_shift,
            }),
            Some(DiscriminatorTimes::Sampler(s)) => Ok(s),
            Some(DiscriminatorTimes::Named(NamedTimes::Teacher)) => Err(config_error(
                "times",
                "\"teacher\" must be resolved with the teacher's sampler first \
                 (DiscriminatorConfig::with_teacher_times)",
            )),
        }
    }
}

/// The paper's tap rule scaled to `depth` blocks: `round(0.44·N)`, `round(0.72·N)`, `N`
/// (16, 26, 36 for the paper's 36 blocks), without duplicates. Wan 2.1: 13, 22, 30 for the
/// 1.3B's 30 blocks and 18, 29, 40 for the 14B's 40.
pub fn default_taps(depth: usize) -> Vec<usize> {
    let mut taps: Vec<usize> = [0.44, 0.72, 1.0]
        .iter()
        .map(|f| ((f * depth as f64).round() as usize).clamp(1, depth))
        .collect();
    taps.dedup();
    taps
}

/// One cross-attention-only head: pre-RMSNorm on the query token and on the visual tokens,
/// Q/K/V/O projections with Q/K RMSNorm, then a pre-RMSNorm GELU MLP; residual connections.
/// With `q` the learnable token and `x` the tokens:
/// `h = q + O(attn(norm_q(Q(rms(q))), norm_k(K(rms(x))), V(rms(x))))`, output
/// `h + MLP(rms(h))`.
#[derive(Debug)]
pub struct TapHead {
    token: Tensor,
    norm_query: RmsNorm,
    norm_tokens: RmsNorm,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    to_out: nn::Linear,
    norm_mlp: RmsNorm,
    mlp_up: nn::Linear,
    mlp_down: nn::Linear,
    heads: i64,
    backend: apt_mmdit::AttentionBackend,
}

impl TapHead {
    /// Creates the head under `p` for width `d` with `heads` heads.
    pub fn new(p: nn::Path, d: i64, heads: i64, backend: apt_mmdit::AttentionBackend) -> Self {
        let hd = d / heads;
        let lin = |name: &str, i: i64, o: i64| nn::linear(&p / name, i, o, Default::default());
        Self {
            token: p.randn("token", &[1, 1, d], 0.0, 0.02),
            norm_query: RmsNorm::new(&p / "norm_query", d, 1e-6),
            norm_tokens: RmsNorm::new(&p / "norm_tokens", d, 1e-6),
            to_q: lin("to_q", d, d),
            to_k: lin("to_k", d, d),
            to_v: lin("to_v", d, d),
            norm_q: RmsNorm::new(&p / "norm_q", hd, 1e-6),
            norm_k: RmsNorm::new(&p / "norm_k", hd, 1e-6),
            to_out: lin("to_out", d, d),
            norm_mlp: RmsNorm::new(&p / "norm_mlp", d, 1e-6),
            mlp_up: lin("mlp_up", d, 4 * d),
            mlp_down: lin("mlp_down", 4 * d, d),
            heads,
            backend,
        }
    }

    /// Visual tokens `[B, N, D]` → one feature vector `[B, D]`.
    pub fn forward(&self, tokens: &Tensor) -> Tensor {
        let (b, n, d) = tokens.size3().expect("[B, N, D]");
        let query = self.token.expand([b, 1, d], false);
        let split = |t: Tensor, len: i64| t.view([b, len, self.heads, -1]).transpose(1, 2);
        let kv = self.norm_tokens.forward(tokens);
        let q = self.norm_q.forward(&split(
            self.to_q.forward(&self.norm_query.forward(&query)),
            1,
        ));
        let k = self.norm_k.forward(&split(self.to_k.forward(&kv), n));
        let v = split(self.to_v.forward(&kv), n);
        let attended = attention(&q, &k, &v, self.backend)
            .transpose(1, 2)
            .reshape([b, 1, d]);
        let h = &query + self.to_out.forward(&attended);
        let h = &h
            + self
                .mlp_down
                .forward(&self.mlp_up.forward(&self.norm_mlp.forward(&h)).gelu("tanh"));
        h.squeeze_dim(1)
    }
}

/// Parameters of one [`TapHead`] of width `d` with `head_dim`-wide heads (closed form).
pub fn tap_head_params(d: u64, head_dim: u64) -> u64 {
    let linear = |i: u64, o: u64| i * o + o;
    // token, norm_query, norm_tokens, norm_mlp (d each); norm_q, norm_k (head_dim each).
    4 * d + 2 * head_dim + 4 * linear(d, d) + linear(d, 4 * d) + linear(4 * d, d)
}

/// Parameters of an [`AptDiscriminator`] on a `model` backbone with `taps` heads (closed form,
/// so the 8B preset can be sized without building it): the whole backbone, the heads, and the
/// output LayerNorm + projection.
pub fn discriminator_param_count(model: &ModelConfig, taps: usize) -> u64 {
    let d = model.hidden_size() as u64;
    let width = d * taps as u64;
    model.parameter_count()
        + taps as u64 * tap_head_params(d, model.head_dim() as u64)
        + 2 * width
        + width
        + 1
}

/// The APT discriminator. Variables: `backbone.*` (diffusers names, loadable from the teacher),
/// `heads.<i>.*`, `out_norm.*`, `out_proj.*`.
#[derive(Debug)]
pub struct AptDiscriminator {
    backbone: Model,
    heads: Vec<TapHead>,
    taps: Vec<usize>,
    out_norm: nn::LayerNorm,
    out_proj: nn::Linear,
    times: TimestepSampler,
}

impl AptDiscriminator {
    /// Builds the discriminator for a backbone of config `model` under `p`; `cfg` is checked
    /// first ([`DiscriminatorConfig::validate`], keys named as its fields).
    pub fn new(
        p: nn::Path,
        model: &ModelConfig,
        cfg: &DiscriminatorConfig,
    ) -> apt_flow::Result<Self> {
        cfg.validate("", model.depth())?;
        let taps = cfg
            .taps
            .clone()
            .unwrap_or_else(|| default_taps(model.depth()));
        let times = cfg.time_sampler()?;
        let d = model.hidden_size() as i64;
        let heads = taps
            .iter()
            .enumerate()
            .map(|(i, _)| {
                TapHead::new(
                    &p / "heads" / i,
                    d,
                    model.num_heads() as i64,
                    model.attention(),
                )
            })
            .collect();
        let width = d * taps.len() as i64;
        Ok(Self {
            backbone: Model::new(&p / "backbone", model)?,
            heads,
            out_norm: nn::layer_norm(&p / "out_norm", vec![width], Default::default()),
            out_proj: nn::linear(&p / "out_proj", width, 1, Default::default()),
            taps,
            times,
        })
    }

    /// The tap layers.
    pub fn taps(&self) -> &[usize] {
        &self.taps
    }

    /// D's timestep distribution.
    pub fn time_sampler(&self) -> &TimestepSampler {
        &self.times
    }

    /// `n` D-timesteps `[n]`, one per sample, from [`time_sampler`](Self::time_sampler).
    pub fn sample_times(&self, n: i64, rng: &mut TensorRng, device: tch::Device) -> Tensor {
        self.times.sample(n, rng, device)
    }

    /// Logits `[B]` for clips `x` `[B, C, T, H, W]` (fed as they are) at D-times `t` `[B]` with
    /// the text `context` `[B, L, context_dim]` and `pooled` `[B, pooled_dim]`:
    /// `D(x, t, c) = w·LayerNorm([h_1; …; h_k]) + b`, `h_i` `[B, d]` the head of tap `i` (`d` the
    /// model width).
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
    ) -> apt_mmdit::Result<Tensor> {
        let tapped = self
            .backbone
            .forward_with_taps(x, t, context, pooled, &self.taps, false)?;
        Ok(self.head_logits(&tapped.taps))
    }

    /// The logits `[B]` from the backbone's hidden states at the taps, in fp32 whatever the
    /// weights' precision (losses and the approximated-R1 difference are taken in fp32).
    fn head_logits(&self, taps: &[Tensor]) -> Tensor {
        let features: Vec<Tensor> = self
            .heads
            .iter()
            .zip(taps)
            .map(|(h, tokens)| h.forward(tokens))
            .collect();
        let joined = self.out_norm.forward(&Tensor::cat(&features, 1));
        self.out_proj
            .forward(&joined)
            .squeeze_dim(1)
            .to_kind(tch::Kind::Float)
    }

    /// Back-propagates `loss(D(x, t, c))` (logits `[B]` as [`forward`](Self::forward)) into
    /// D's parameters, recomputing the backbone's block activations during the backward pass
    /// (the heads run with autograd); returns the detached loss. No gradient reaches the inputs.
    pub fn backward_with_recompute(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
        loss: impl FnOnce(&Tensor) -> Tensor,
    ) -> apt_mmdit::Result<Tensor> {
        self.backbone
            .backward_with_recompute(x, t, context, pooled, &self.taps, false, |tapped| {
                loss(&self.head_logits(&tapped.taps))
            })
    }

    /// D's timesteps for uniform `u` `[B]` through the shift of its sampler (`shift(u, s)`).
    pub fn times_from_uniform(&self, u: &Tensor) -> Tensor {
        apt_flow::timesteps::shift_tensor(u, self.times.shift)
    }
}

/// Copies diffusion weights (diffusers names) into the discriminator's `backbone.*` variables
/// (every one must be present with its shape); heads, output layers and LoRA adapters on the
/// backbone keep their fresh initialisation.
pub fn load_backbone(vs: &nn::VarStore, diffusion: &nn::VarStore) -> apt_mmdit::Result<()> {
    let source = diffusion.variables();
    let vars: std::collections::HashMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter(|(k, _)| k.starts_with("backbone.") && !apt_mmdit::lora::is_adapter_variable(k))
        .collect();
    let (mut missing, mut mismatched) = (vec![], vec![]);
    for (k, v) in vars.iter() {
        match source.get(&k["backbone.".len()..]) {
            None => missing.push(k.clone()),
            Some(t) if t.size() != v.size() => {
                mismatched.push(format!("{k}: {:?} vs {:?}", t.size(), v.size()))
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() || !mismatched.is_empty() {
        return Err(apt_mmdit::MmditError::Weights {
            path: "diffusion weights".into(),
            missing,
            unexpected: vec![],
            mismatched,
        });
    }
    tch::no_grad(|| {
        for (k, mut v) in vars {
            v.copy_(&source[&k["backbone.".len()..]].to_kind(v.kind()));
        }
    });
    Ok(())
}
