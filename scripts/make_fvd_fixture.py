"""Reference fixture for apt-pipeline's FVD plumbing and Fréchet distance (no I3D weights).

Run by `cargo xtask fixtures`. Writes, under the output directory:

  fake_i3d.pt        a TorchScript module with the standard I3D file's interface,
                     forward(x [B, 3, 16, 224, 224], rescale, resize, return_features) -> [B, 400]
                     with return_features (a small random 3D conv + pooling + linear)
  wrong_i3d.pt       a TorchScript module of another interface (forward(x) -> x)
  fvd.safetensors    clips [3, 3, 5, 32, 32] in [-1, 1]; `features`: fake_i3d's features of them
                     after the I3D preprocessing (16 frames at the nearest evenly spaced
                     positions, bilinear resize to 224, align_corners=False); `a` [50, 8],
                     `b` [60, 8] and `frechet`: their Fréchet distance with scipy.linalg.sqrtm

Deterministic for a given torch/scipy version.
"""

import argparse
import os

import numpy as np
import scipy
import scipy.linalg
import torch
import torch.nn.functional as F
from safetensors.torch import save_file


class FakeI3D(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 8, kernel_size=(3, 7, 7), stride=(2, 4, 4))
        self.head = torch.nn.Linear(8, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean(dim=(2, 3, 4))
        logits = self.head(h)
        if return_features:
            return logits
        return torch.softmax(logits, dim=1)


class Wrong(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def to_i3d(clips: torch.Tensor) -> torch.Tensor:
    n, c, t, h, w = clips.shape
    index = [min(max(int((k + 0.5) * t / 16), 0), t - 1) for k in range(16)]
    frames = clips[:, :, index].permute(0, 2, 1, 3, 4).reshape(n * 16, c, h, w)
    resized = F.interpolate(frames, size=(224, 224), mode="bilinear", align_corners=False)
    return resized.reshape(n, 16, c, 224, 224).permute(0, 2, 1, 3, 4).clamp(-1, 1)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(sa @ sb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * root))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(20251209)
    model = torch.jit.script(FakeI3D().eval())
    model.save(os.path.join(args.out, "fake_i3d.pt"))
    torch.jit.script(Wrong()).save(os.path.join(args.out, "wrong_i3d.pt"))
    clips = torch.rand(3, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        features = model(to_i3d(clips), False, False, True)
    rng = np.random.default_rng(7)
    a = rng.normal(size=(50, 8))
    b = rng.normal(loc=0.3, scale=1.2, size=(60, 8)) @ rng.normal(size=(8, 8)) * 0.5
    save_file(
        {"clips": clips.contiguous(), "features": features.contiguous(),
         "a": torch.from_numpy(a), "b": torch.from_numpy(b),
         "frechet": torch.tensor(frechet(a, b), dtype=torch.float64)},
        os.path.join(args.out, "fvd.safetensors"),
        metadata={"torch": torch.__version__, "scipy": scipy.__version__},
    )
    print(f"fvd fixture: frechet {frechet(a, b):.6f}, features {tuple(features.shape)}")


if __name__ == "__main__":
    main()
