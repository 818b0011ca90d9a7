//! Gradient utilities over a `VarStore`, variable by variable (the loop itself works on the
//! flat buffers of [`super::flat`]): zeroing, and clipping to a global norm.

use tch::{nn, Tensor};

/// Clears every gradient of `vs` (zeroes them in place).
pub fn zero_grad(vs: &nn::VarStore) {
    for v in vs.trainable_variables() {
        let mut g = v.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// Scales gradients so that their global L2 norm is at most `max_norm`: when
/// `‖g‖ = √(Σ ‖g_i‖²) > max_norm`, `g ← g·max_norm/(‖g‖ + 1e-6)`. Returns `‖g‖` before
/// clipping (like `torch.nn.utils.clip_grad_norm_`).
pub fn clip_grad_norm(vs: &nn::VarStore, max_norm: f64) -> f64 {
    let grads: Vec<Tensor> = vs
        .trainable_variables()
        .iter()
        .map(Tensor::grad)
        .filter(Tensor::defined)
        .collect();
    if grads.is_empty() {
        return 0.0;
    }
    let total = tch::no_grad(|| {
        Tensor::stack(
            &grads
                .iter()
                .map(|g| g.to_kind(tch::Kind::Float).norm())
                .collect::<Vec<_>>(),
            0,
        )
        .norm()
        .double_value(&[])
    });
    if total.is_finite() && total > max_norm {
        let scale = max_norm / (total + 1e-6);
        tch::no_grad(|| {
            for mut g in grads {
                let _ = g.g_mul_scalar_(scale);
            }
        });
    }
    total
}
