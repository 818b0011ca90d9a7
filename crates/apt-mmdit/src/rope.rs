//! 3D rotary position embedding over (frame, row, column) patch indices.
//!
//! The head channels are split into three groups, one per axis (`axes_dim`); within a group,
//! adjacent channel pairs `(2i, 2i+1)` rotate by the angle `pos · θ^(-2i/d_axis)`. Only the
//! visual queries and keys are rotated; text tokens carry no position (the table's rows after
//! the visual tokens are the identity, so one rotation serves the joint `[visual; text]` tokens).

use tch::{Device, Kind, Tensor};

use crate::embeddings::PatchGrid;

/// Cosines and sines for every visual token then every text token, `[N + L, head_dim / 2]`
/// each (text rows: cos 1, sin 0).
#[derive(Debug)]
pub struct RopeTable {
    cos: Tensor,
    sin: Tensor,
}

impl RopeTable {
    /// Builds the table for a patch grid followed by `text_tokens` unrotated tokens (computed
    /// in f64, stored as `kind`).
    pub fn new(
        grid: PatchGrid,
        text_tokens: i64,
        axes_dim: [usize; 3],
        theta: f64,
        kind: Kind,
        device: Device,
    ) -> Self {
        let opts = (Kind::Double, Device::Cpu);
        let sizes = [grid.t, grid.h, grid.w];
        let mut angles = Vec::with_capacity(3);
        for (axis, (&dim, &len)) in axes_dim.iter().zip(sizes.iter()).enumerate() {
            let dim = dim as i64;
            if dim == 0 {
                continue;
            }
            let inv_freq =
                (Tensor::arange_start_step(0, dim, 2, opts) / dim as f64 * -theta.ln()).exp();
            let mut shape = [1i64, 1, 1, 1];
            shape[axis] = len;
            let pos = Tensor::arange(len, opts)
                .view(shape)
                .expand([grid.t, grid.h, grid.w, 1], false);
            angles.push((pos * inv_freq.view([1, 1, 1, -1])).reshape([grid.len(), dim / 2]));
        }
        let visual = Tensor::cat(&angles, 1);
        let text = visual.new_zeros([text_tokens, visual.size()[1]], opts);
        let angles = Tensor::cat(&[visual, text], 0);
        Self {
            cos: angles.cos().to_kind(kind).to_device(device),
            sin: angles.sin().to_kind(kind).to_device(device),
        }
    }

    /// Rotates `x` `[B, H, N + L, head_dim]` (the token count must equal the table's).
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let pairs = x.reshape([size[0], size[1], size[2], size[3] / 2, 2]);
        let even = pairs.select(-1, 0);
        let odd = pairs.select(-1, 1);
        let rot_even = &even * &self.cos - &odd * &self.sin;
        let rot_odd = &even * &self.sin + &odd * &self.cos;
        Tensor::stack(&[rot_even, rot_odd], -1).view(size.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_norms_and_relative_angle() {
        let grid = PatchGrid { t: 2, h: 3, w: 4 };
        let table = RopeTable::new(grid, 0, [4, 6, 6], 10_000.0, Kind::Double, Device::Cpu);
        let x = Tensor::randn([1, 2, grid.len(), 16], (Kind::Double, Device::Cpu));
        let y = table.apply(&x);
        let nx = x.square().sum_dim_intlist(-1, false, Kind::Double);
        let ny = y.square().sum_dim_intlist(-1, false, Kind::Double);
        assert!((nx - ny).abs().max().double_value(&[]) < 1e-12);
        // Token 0 sits at the origin: no rotation.
        let d = (y.narrow(2, 0, 1) - x.narrow(2, 0, 1))
            .abs()
            .max()
            .double_value(&[]);
        assert!(d < 1e-12);
    }

    #[test]
    fn dot_products_depend_only_on_offsets() {
        // q·k after rotation depends on (pos_q - pos_k): shift both along w by one patch.
        let grid = PatchGrid { t: 1, h: 1, w: 4 };
        let table = RopeTable::new(grid, 0, [2, 2, 4], 100.0, Kind::Double, Device::Cpu);
        let q = Tensor::randn([1, 1, 1, 8], (Kind::Double, Device::Cpu)).repeat([1, 1, 4, 1]);
        let k = Tensor::randn([1, 1, 1, 8], (Kind::Double, Device::Cpu)).repeat([1, 1, 4, 1]);
        let (rq, rk) = (table.apply(&q), table.apply(&k));
        let dot = |i: i64, j: i64| {
            (rq.narrow(2, i, 1) * rk.narrow(2, j, 1))
                .sum(Kind::Double)
                .double_value(&[])
        };
        assert!((dot(0, 1) - dot(2, 3)).abs() < 1e-12);
        assert!((dot(0, 1) - dot(0, 2)).abs() > 1e-6);
    }
}
