//! FVD (Unterthiner et al. 2018) when the user supplies the standard I3D TorchScript file
//! (`[report] fvd_i3d`, e.g. StyleGAN-V's `i3d_torchscript.pt`): clips resized to the I3D's
//! 224×224 and resampled to its 16 frames (a shorter clip repeats its frames, nearest index),
//! in [-1, 1]; the module's `forward(x, rescale, resize, return_features)` called with
//! `return_features = true` gives one feature vector per clip; FVD is the Fréchet distance
//! between the generated and the real features. apt-rs ships no I3D weights.

use std::path::{Path, PathBuf};

use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::error::{PipelineError, Result};

/// The I3D's frame size.
pub const I3D_SIZE: i64 = 224;
/// The I3D's frame count.
pub const I3D_FRAMES: i64 = 16;

/// A loaded I3D feature extractor.
pub struct I3d {
    module: CModule,
    path: PathBuf,
    device: Device,
}

impl I3d {
    /// Loads `path` (TorchScript) on `device` and checks its interface on one blank clip:
    /// `forward(x [1, 3, 16, 224, 224], rescale, resize, return_features)` must return a
    /// `[1, F]` float tensor.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let bad = |reason: String| PipelineError::File {
            path: path.to_path_buf(),
            reason,
        };
        let module = CModule::load_on_device(path, device).map_err(|e| {
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            bad(format!("not a TorchScript module: {first}"))
        })?;
        let i3d = Self {
            module,
            path: path.to_path_buf(),
            device,
        };
        let probe = Tensor::zeros(
            [1, 3, I3D_FRAMES, I3D_SIZE, I3D_SIZE],
            (Kind::Float, device),
        );
        let out = i3d.call(&probe).map_err(|e| {
            bad(format!(
                "not an I3D of the expected interface (forward(x [B, 3, 16, 224, 224], rescale, \
                 resize, return_features) -> [B, F]): {e}"
            ))
        })?;
        if out.dim() != 2 || out.size()[0] != 1 {
            return Err(bad(format!(
                "returned a {:?} tensor for one clip; an I3D feature extractor returns [1, F]",
                out.size()
            )));
        }
        Ok(i3d)
    }

    fn call(&self, x: &Tensor) -> std::result::Result<Tensor, String> {
        let args = [
            IValue::Tensor(x.shallow_clone()),
            IValue::Bool(false),
            IValue::Bool(false),
            IValue::Bool(true),
        ];
        match tch::no_grad(|| self.module.forward_is(&args)) {
            Ok(IValue::Tensor(t)) => Ok(t),
            Ok(other) => Err(format!("returned {other:?}, not a tensor")),
            // libtorch's message, without its C++ backtrace.
            Err(e) => Err(e.to_string().lines().next().unwrap_or_default().to_string()),
        }
    }

    /// Features `[N, F]` of pixel clips `[N, 3, T, H, W]` in [-1, 1], in batches of 8.
    pub fn features(&self, clips: &Tensor) -> Result<Tensor> {
        let n = clips.size()[0];
        let mut out = vec![];
        for first in (0..n).step_by(8) {
            let batch = clips.narrow(0, first, 8.min(n - first));
            let x = to_i3d_input(&batch.to_device(self.device).to_kind(Kind::Float));
            let f = self.call(&x).map_err(|e| PipelineError::File {
                path: self.path.clone(),
                reason: e,
            })?;
            out.push(f.to_kind(Kind::Float).to_device(Device::Cpu));
        }
        Ok(Tensor::cat(&out, 0))
    }
}

/// Clips `[N, 3, T, H, W]` → `[N, 3, 16, 224, 224]`: frames at the nearest of 16 evenly spaced
/// positions (repeated when the clip is shorter), each resized bilinearly.
pub fn to_i3d_input(clips: &Tensor) -> Tensor {
    let (n, c, t, h, w) = clips.size5().expect("[N, 3, T, H, W]");
    let index: Vec<i64> = (0..I3D_FRAMES)
        .map(|k| ((k as f64 + 0.5) * t as f64 / I3D_FRAMES as f64).floor() as i64)
        .map(|k| k.clamp(0, t - 1))
        .collect();
    let frames = clips.index_select(2, &Tensor::from_slice(&index).to_device(clips.device()));
    let flat = frames
        .permute([0, 2, 1, 3, 4])
        .reshape([n * I3D_FRAMES, c, h, w]);
    let resized = flat.upsample_bilinear2d([I3D_SIZE, I3D_SIZE], false, None, None);
    resized
        .reshape([n, I3D_FRAMES, c, I3D_SIZE, I3D_SIZE])
        .permute([0, 2, 1, 3, 4])
        .contiguous()
        .clamp(-1.0, 1.0)
}
