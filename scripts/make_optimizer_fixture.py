"""Reference trajectories of torch.optim.AdamW and RMSprop for apt-flow's optimizer tests.

Run by `cargo xtask fixtures`. Two float32 parameters `a` [3, 4] and `b` [5] receive the same
five recorded gradients under each optimizer; the parameters after every step are stored:

  param.<p>                 initial values
  grad.<step>.<p>           the gradient fed at step 0..4
  <variant>.after.<step>.<p>  parameters after that step

Hyper-parameters per variant are in the metadata (JSON under "variants").
"""

import argparse
import json

import torch
from safetensors.torch import save_file

VARIANTS = {
    "adamw": ("AdamW", dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)),
    "rmsprop": ("RMSprop", dict(lr=1e-2, alpha=0.9, eps=1e-8)),
    "rmsprop_full": ("RMSprop", dict(lr=1e-2, alpha=0.95, eps=1e-6, weight_decay=0.01, momentum=0.5, centered=True)),
}
STEPS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(7)
    init = {"a": torch.randn(3, 4), "b": torch.randn(5)}
    grads = [{k: torch.randn_like(v) * (0.1 + step) for k, v in init.items()} for step in range(STEPS)]
    tensors = {f"param.{k}": v.clone() for k, v in init.items()}
    for step, g in enumerate(grads):
        for k, v in g.items():
            tensors[f"grad.{step}.{k}"] = v.clone()
    for name, (cls, kwargs) in VARIANTS.items():
        params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
        opt = getattr(torch.optim, cls)(list(params.values()), **kwargs)
        for step, g in enumerate(grads):
            opt.zero_grad()
            for k, p in params.items():
                p.grad = g[k].clone()
            opt.step()
            for k, p in params.items():
                tensors[f"{name}.after.{step}.{k}"] = p.detach().clone()
    meta = {"variants": json.dumps({k: [c, v] for k, (c, v) in VARIANTS.items()}), "torch": torch.__version__}
    save_file(tensors, args.out, metadata=meta)


if __name__ == "__main__":
    main()
