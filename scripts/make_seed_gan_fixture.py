"""Parity fixture for apt-gan's article-compatible conditional MLP WGAN-GP.

Run by `cargo xtask fixtures`. The classes below are the source article's own PyTorch code
(../shared/seed/apt-seed-article.txt: `Generator_linear`, `Discriminator_wassertein`; the
article lost its indentation, restored here, nothing else changed). The script builds both
with random weights, draws inputs and the interpolation weights ε, and records what the seed
code computes:

  gen.*, dis.*          the modules' state_dict tensors
  noise, context, true_samples, epsilon, lambda_gp (0-d)
  generated             Generator_linear(noise, context)
  critic_loss           Discriminator_wassertein.loss(generated, true_samples, context)
  gradient_penalty      its grad_pen(...) term
  grad.dis.*            d critic_loss / d dis parameters
"""

import argparse

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file


class Discriminator_wassertein(nn.Module):

    def __init__(self, **kwargs):

        super(Discriminator_wassertein, self).__init__()

        self.in_size = kwargs['in_size']  # Dim of the random variable to model (PV, wind power, etc)
        self.cond_in = kwargs['cond_in']  # Dim of context (weather forecasts, etc)
        self.latent_s = kwargs['latent_s']  # Dim of the latent space
        self.lambda_gp = kwargs['lambda_gp']

        # Set GPU if available
        if kwargs['gpu']:
            self.device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        else:
            self.device = 'cpu'

        l_dis_net = [self.in_size + self.cond_in] + [kwargs['gen_w']] * kwargs['gen_l'] + [1]

        # Build the discriminator
        alpha = 0.01
        self.dis_net = []
        for l1, l2 in zip(l_dis_net[:-1], l_dis_net[1:]):
            self.dis_net += [nn.Linear(l1, l2), nn.LeakyReLU(alpha)]
        self.dis_net.pop()  # The last activation function is a ReLU to return a positive number
        self.dis_net.append(nn.ReLU())
        self.dis = nn.Sequential(*self.dis_net)

    def loss(self, generated_samples: torch.Tensor, true_samples: torch.Tensor, context: torch.Tensor):

        # Discriminator's answers to generated and true samples
        D_true = self.dis(torch.cat((true_samples, context), dim=1))
        D_generated = self.dis(torch.cat((generated_samples, context), dim=1))
        # Compute Discriminator's loss with a gradient penalty to force Lipschitz condition
        gp = self.grad_pen(real=true_samples, samples=generated_samples, context=context)
        loss = -(torch.mean(D_true) - torch.mean(D_generated)) + self.lambda_gp * gp

        return loss

    def forward(self, input: torch.Tensor, context: torch.Tensor):

        pred = self.dis(torch.cat((input, context), dim=1))

        return pred

    def grad_pen(self, real: torch.tensor, samples: torch.tensor, context: torch.Tensor):

        # Interpolated sample
        bs, sample_size = real.shape[0], real.shape[1]
        epsilon = torch.rand((bs, sample_size), device=self.device)
        interpolated_sample = real * epsilon + samples * (1 - epsilon)
        # Compute critic scores
        mixed_score = self.dis(torch.cat((interpolated_sample, context), dim=1))
        # Gradient of the mixed_score with respect with the interpolated_sample
        gradient = torch.autograd.grad(inputs=interpolated_sample,
                                       outputs=mixed_score,
                                       grad_outputs=torch.ones_like(mixed_score),
                                       create_graph=True, retain_graph=True)[0]

        gradient = gradient.view(gradient.shape[0], -1)
        gradient_norm = gradient.norm(2, dim=1)
        gradient_pen = torch.mean((gradient_norm - 1) ** 2)

        return gradient_pen


class Generator_linear(nn.Module):

    def __init__(self, **kwargs):

        super(Generator_linear, self).__init__()

        self.in_size = kwargs['in_size']  # Dim of the random variable to model (PV, wind power, etc)
        self.cond_in = kwargs['cond_in']  # Dim of context (weather forecasts, etc)
        self.latent_s = kwargs['latent_s']  # Dim of the latent space

        # Set GPU if available
        if kwargs['gpu']:
            self.device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        else:
            self.device = 'cpu'

        l_gen_net = [self.latent_s + self.cond_in] + [kwargs['gen_w']] * kwargs['gen_l'] + [self.in_size]

        # Build the generator
        self.gen_net = []
        for l1, l2 in zip(l_gen_net[:-1], l_gen_net[1:]):
            self.gen_net += [nn.Linear(l1, l2), nn.ReLU()]
        self.gen_net.pop()  # Regression problem, no activation function at the last layer
        self.gen = nn.Sequential(*self.gen_net)

    def forward(self, noise: torch.Tensor, context: torch.Tensor):

        pred = self.gen(torch.cat((noise, context), dim=1))

        return pred

    def sample(self, n_s=1, x_cond: np.array = None):

        # Generate samples from a multivariate Gaussian
        z = torch.randn(n_s, self.latent_s).to(self.device)
        context = torch.tensor(np.tile(x_cond, n_s).reshape(n_s, self.cond_in)).to(self.device).float()
        scenarios = self.gen(torch.cat((z, context), dim=1)).view(n_s, -1).cpu().detach().numpy()

        return scenarios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(11)
    kwargs = dict(in_size=24, cond_in=6, latent_s=8, gen_w=32, gen_l=2, lambda_gp=10.0, gpu=False)
    gen, dis = Generator_linear(**kwargs), Discriminator_wassertein(**kwargs)
    bs = 16
    noise, context = torch.randn(bs, kwargs["latent_s"]), torch.randn(bs, kwargs["cond_in"])
    true_samples = torch.randn(bs, kwargs["in_size"])
    epsilon = torch.rand(bs, kwargs["in_size"])
    generated = gen(noise, context)
    # The seed draws ε inside grad_pen with torch.rand: hand it the recorded one.
    real_rand = torch.rand
    torch.rand = lambda *a, **k: epsilon.clone()
    try:
        loss = dis.loss(generated, true_samples, context)
        gp = dis.grad_pen(real=true_samples, samples=generated, context=context)
    finally:
        torch.rand = real_rand
    grads = torch.autograd.grad(loss, list(dis.parameters()), retain_graph=True)
    tensors = {f"gen.{k}": v.detach().clone() for k, v in gen.state_dict().items()}
    tensors.update({f"dis.{k}": v.detach().clone() for k, v in dis.state_dict().items()})
    tensors.update({f"grad.dis.{k}": g.detach().clone() for (k, _), g in zip(dis.named_parameters(), grads)})
    tensors.update(noise=noise, context=context, true_samples=true_samples, epsilon=epsilon,
                   lambda_gp=torch.tensor(kwargs["lambda_gp"]), generated=generated.detach(),
                   critic_loss=loss.detach(), gradient_penalty=gp.detach())
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out, metadata={"torch": torch.__version__})
    print(f"critic loss {loss.item():.6f}, gradient penalty {gp.item():.6f}")


if __name__ == "__main__":
    main()
