//! A part's arithmetic: fp32, or bf16 compute over fp32 master weights (see
//! [`super::flat`] for how the two copies are kept).

use serde::{Deserialize, Serialize};
use tch::{nn, Kind};

/// The kind of arithmetic a part's forward and backward passes run in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in fp32.
    #[default]
    Fp32,
    /// bf16 weights, activations and gradients; fp32 master weights, gradient accumulation,
    /// optimizer state, EMA and losses.
    Bf16,
}

impl Precision {
    /// The kind of the model's weights and activations.
    pub fn compute_kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    /// `fp32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Casts every floating-point variable of `vs` to the compute kind (for a model that is
    /// not trained, e.g. a frozen teacher; a trained one is cast by its
    /// [`FlatParams`](super::FlatParams)).
    pub fn cast_store(self, vs: &nn::VarStore) {
        let kind = self.compute_kind();
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                if v.is_floating_point() && v.kind() != kind {
                    v.set_data(&v.to_kind(kind));
                }
            }
        });
    }
}
