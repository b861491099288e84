"""The NCE objective against independent computations."""
import math

import pytest
import torch
import torch.distributions as D
import torch.nn.functional as F

from model import ACTIVATIONS, EBM
from util import nce_backward, step_values, value

NOISE = D.MultivariateNormal(torch.zeros(2), 4 * torch.eye(2))   # the original noise, an independent object


class Linear(torch.nn.Module):
    """log p(u) = scale·u_0 - c: logits as large as we like."""
    def __init__(self, scale):
        super().__init__()
        self.scale, self.c = scale, torch.nn.Parameter(torch.zeros(1))

    def forward(self, u):
        return self.scale * u[:, :1] - self.c


@pytest.mark.parametrize('scale', [0.3, 1e4])
@pytest.mark.parametrize('nu', [1, 4])
def test_value_is_binary_cross_entropy_of_log_p_minus_log_q(scale, nu):
    torch.manual_seed(0)
    x, gen = torch.randn(50, 2), 2 * torch.randn(50 * nu, 2)
    energy = Linear(scale)
    loss, acc = value(energy, NOISE, x, gen, nu)
    lx = energy(x).squeeze(1) - NOISE.log_prob(x) - math.log(nu)
    lg = energy(gen).squeeze(1) - NOISE.log_prob(gen) - math.log(nu)
    ref = (F.binary_cross_entropy_with_logits(lx, torch.ones_like(lx))
           + nu * F.binary_cross_entropy_with_logits(lg, torch.zeros_like(lg)))
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    if scale == 1e4:
        assert lx.abs().max() > 1e3          # the extreme logits really were extreme
    assert isinstance(acc, torch.Tensor)     # no host sync inside the step
    # the training loop's form: log q computed beforehand, for a whole epoch at once
    loss_pre, acc_pre = value(energy, None, x, gen, nu, log_q=NOISE.log_prob(torch.cat([x, gen])))
    assert torch.equal(loss_pre, loss) and torch.equal(acc_pre, acc)
    assert acc.item() == pytest.approx(((lx > 0).sum() + (lg < 0).sum()).item() / (len(x) + len(gen)))


def test_nu_1_is_the_original_ratio_form():
    """V = E log p/(p+q) + E log q/(p+q), computed naively in float64 where it does not overflow."""
    torch.manual_seed(1)
    energy = EBM().double()
    x, gen = torch.randn(64, 2, dtype=torch.float64), 2 * torch.randn(64, 2, dtype=torch.float64)
    noise = D.MultivariateNormal(torch.zeros(2, dtype=torch.float64), 4 * torch.eye(2, dtype=torch.float64))
    p = lambda u: energy(u).squeeze(1).exp()
    q = lambda u: noise.log_prob(u).exp()
    v = (p(x) / (p(x) + q(x))).log().mean() + (q(gen) / (p(gen) + q(gen))).log().mean()
    assert value(energy, noise, x, gen)[0].item() == pytest.approx(-v.item(), rel=1e-10)


@pytest.mark.parametrize('nu', [1, 3])
def test_gradient_wrt_c(nu):
    """d(-V)/dc = E_data σ(-G) - ν E_noise σ(G), since G = -f - c - log q - log ν."""
    torch.manual_seed(2)
    energy = EBM()
    x, gen = torch.randn(80, 2), 2 * torch.randn(80 * nu, 2)
    loss, _ = value(energy, NOISE, x, gen, nu)
    loss.backward()
    with torch.no_grad():
        gx = energy(x).squeeze(1) - NOISE.log_prob(x) - math.log(nu)
        gg = energy(gen).squeeze(1) - NOISE.log_prob(gen) - math.log(nu)
        expect = torch.sigmoid(-gx).mean() - nu * torch.sigmoid(gg).mean()
    assert energy.c.grad.item() == pytest.approx(expect.item(), rel=1e-4, abs=1e-6)


def test_adam_step_is_torch_adam(monkeypatch):
    """Our Adam against torch.optim.Adam on the same gradients: bit for bit against the fused kernel it
    calls, to float precision against the default implementation and against our plain-ops fallback."""
    import optim
    torch.manual_seed(3)
    nets = [EBM() for _ in range(3)]
    for n in nets[1:]:
        n.load_state_dict(nets[0].state_dict())
    fused = torch.optim.Adam(nets[1].parameters(), lr=1e-2, betas=(0.8, 0.99), fused=True)
    plain = torch.optim.Adam(nets[2].parameters(), lr=1e-2, betas=(0.8, 0.99))
    params = list(nets[0].parameters())
    state = optim.adam_init(params)
    for _ in range(30):
        x = torch.randn(64, 2)
        for n in nets:
            n.zero_grad()
            n(x).pow(2).mean().backward()
        optim.adam_step(params, state, 1e-2, 0.8, 0.99)
        fused.step()
        plain.step()
    for a, b, c in zip(params, nets[1].parameters(), nets[2].parameters(), strict=True):
        assert torch.equal(a, b)
        assert torch.allclose(a, c, atol=1e-6)

    # the fallback for a torch without the fused kernel computes the same update
    monkeypatch.setattr(optim, 'FUSED_ADAM', None)
    before = [p.detach().clone() for p in params]
    x = torch.randn(64, 2)
    for n in nets[:2]:
        n.zero_grad()
        n(x).pow(2).mean().backward()
    optim.adam_step(params, state, 1e-2, 0.8, 0.99)
    fused.step()
    for a, b, old in zip(params, nets[1].parameters(), before, strict=True):
        assert not torch.equal(a, old) and torch.allclose(a, b, atol=1e-7)


@pytest.mark.parametrize('act', ACTIVATIONS)
@pytest.mark.parametrize('fourier,nu', [(0, 1), (8, 4)])
def test_the_hand_written_gradient_is_autograds(act, fourier, nu):
    """The training step's nce_backward against value() differentiated by autograd: the same gradient of every
    parameter, bit for bit, for each activation, with and without Fourier features; and the same loss and
    accuracy from step_values."""
    torch.manual_seed(3)
    energy = EBM(depth=3, hidden=16, act=act, fourier=fourier).double()
    x, gen = torch.randn(40, 2, dtype=torch.float64), 2 * torch.randn(40 * nu, 2, dtype=torch.float64)
    noise = D.MultivariateNormal(torch.zeros(2, dtype=torch.float64), 4 * torch.eye(2, dtype=torch.float64))
    loss, acc = value(energy, noise, x, gen, nu)
    loss.backward()
    expect = {k: p.grad.clone() for k, p in energy.named_parameters()}
    energy.zero_grad(set_to_none=True)
    u = torch.cat([x, gen])
    s = torch.cat([torch.ones(40), -torch.ones(40 * nu)]).double()
    s_logit = nce_backward(energy, u, s, noise.log_prob(u), nu)
    # the steps' values and accuracies, the last step's batch shorter than the others
    loss_short, acc_short = value(energy, noise, x[:30], gen[:30 * nu], nu)
    short = torch.cat([s_logit[:30], s_logit[40:40 + 30 * nu]])
    losses, accs = step_values([s_logit, short], nu)
    assert losses.tolist() == pytest.approx([loss.item(), loss_short.item()], rel=1e-12)
    assert accs.tolist() == pytest.approx([acc.item(), acc_short.item()], rel=1e-12)
    assert 0.05 < acc.item() < 0.95                                  # a batch with both kinds of mistake
    for k, p in energy.named_parameters():
        assert p.grad is not None and p.grad.grad_fn is None, k
        assert torch.equal(p.grad, expect[k]), k          # bit for bit: the same kernels in the same order
