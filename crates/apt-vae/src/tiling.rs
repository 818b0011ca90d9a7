//! Tiled decoding (diffusers' `tiled_decode`): overlapping latent tiles are decoded one at a
//! time and blended linearly where they overlap, so peak memory follows the tile, not the frame.

use tch::{Kind, Tensor};

use crate::error::Result;

/// Tile sizes in pixels (diffusers' `enable_tiling` arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Tile height and width in pixels.
    pub tile: [i64; 2],
    /// Distance between tile origins in pixels (< tile: the rest is blended).
    pub stride: [i64; 2],
}

impl Default for Tiling {
    /// diffusers' defaults: 256-pixel tiles every 192 pixels.
    fn default() -> Self {
        Self {
            tile: [256, 256],
            stride: [192, 192],
        }
    }
}

/// Replaces the first `extent` rows (`dim`) of `b` by a linear blend from `a`'s last rows to
/// `b`'s: row y gets `a·(1 − y/extent) + b·(y/extent)`.
fn blend(a: &Tensor, b: &Tensor, extent: i64, dim: i64) -> Tensor {
    let extent = extent
        .min(a.size()[dim as usize])
        .min(b.size()[dim as usize]);
    if extent <= 0 {
        return b.shallow_clone();
    }
    let mut shape = vec![1i64; b.dim()];
    shape[dim as usize] = extent;
    let w = (Tensor::arange(extent, (Kind::Float, b.device())) / extent as f64)
        .to_kind(b.kind())
        .reshape(shape);
    let a_tail = a.narrow(dim, a.size()[dim as usize] - extent, extent);
    let b_head = b.narrow(dim, 0, extent);
    let mixed = a_tail * (1.0 - &w) + b_head * &w;
    let rest = b.narrow(dim, extent, b.size()[dim as usize] - extent);
    Tensor::cat(&[mixed, rest], dim)
}

/// Decodes latents `z` [B, C, …, H', W'] with `decode` tile by tile when they exceed one tile;
/// `ratio` is the decoder's spatial upscaling. Output is not clamped.
pub fn decode_tiled(
    z: &Tensor,
    tiling: &Tiling,
    ratio: i64,
    mut decode: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let nd = z.dim() as i64;
    let (hd, wd) = (nd - 2, nd - 1);
    let size = z.size();
    let (height, width) = (size[hd as usize], size[wd as usize]);
    let tile_h = tiling.tile[0] / ratio;
    let tile_w = tiling.tile[1] / ratio;
    if height <= tile_h && width <= tile_w {
        return decode(z);
    }
    let stride_h = (tiling.stride[0] / ratio).max(1);
    let stride_w = (tiling.stride[1] / ratio).max(1);
    let blend_h = tiling.tile[0] - tiling.stride[0];
    let blend_w = tiling.tile[1] - tiling.stride[1];
    let mut grid: Vec<Vec<Tensor>> = Vec::new();
    for i in (0..height).step_by(stride_h as usize) {
        let mut row = Vec::new();
        for j in (0..width).step_by(stride_w as usize) {
            let tile = z
                .narrow(hd, i, tile_h.min(height - i))
                .narrow(wd, j, tile_w.min(width - j));
            row.push(decode(&tile)?);
        }
        grid.push(row);
    }
    // Blend in place, in order, as diffusers does: a tile blends with its upper neighbour and
    // its left neighbour *after* those were blended themselves.
    let mut rows = Vec::new();
    for i in 0..grid.len() {
        let mut pieces = Vec::new();
        for j in 0..grid[i].len() {
            let mut tile = grid[i][j].shallow_clone();
            if i > 0 {
                tile = blend(&grid[i - 1][j], &tile, blend_h, hd);
            }
            if j > 0 {
                tile = blend(&grid[i][j - 1], &tile, blend_w, wd);
            }
            let keep_h = tiling.stride[0].min(tile.size()[hd as usize]);
            let keep_w = tiling.stride[1].min(tile.size()[wd as usize]);
            pieces.push(tile.narrow(hd, 0, keep_h).narrow(wd, 0, keep_w));
            grid[i][j] = tile;
        }
        rows.push(Tensor::cat(&pieces, wd));
    }
    let out = Tensor::cat(&rows, hd);
    Ok(out
        .narrow(hd, 0, height * ratio)
        .narrow(wd, 0, width * ratio))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// With a decoder that is a pure upsampling (no context), tiling changes nothing.
    #[test]
    fn tiling_a_local_decoder_changes_nothing() {
        tch::manual_seed(2);
        let z = Tensor::randn([1, 2, 3, 7, 9], (Kind::Float, Device::Cpu));
        let up = |t: &Tensor| -> Result<Tensor> {
            let s = t.size();
            Ok(t.reshape([s[0], s[1] * s[2], s[3], s[4]])
                .upsample_nearest2d([s[3] * 4, s[4] * 4], 4.0, 4.0)
                .reshape([s[0], s[1], s[2], s[3] * 4, s[4] * 4]))
        };
        let whole = up(&z).unwrap();
        let tiling = Tiling {
            tile: [12, 16],
            stride: [8, 12],
        };
        let tiled = decode_tiled(&z, &tiling, 4, up).unwrap();
        assert_eq!(tiled.size(), whole.size());
        let diff = (tiled - whole).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
    }
}
