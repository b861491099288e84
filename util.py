"""The NCE objective: the value V(θ), its gradient written out for the training step, and the steps' values."""
import math

import torch
import torch.nn.functional as F


def value(energy, noise, x, gen, nu=1, log_q=None):
    """-V(θ) and the classification accuracy, for ν = len(gen) / len(x) noise samples per data sample:

        V(θ) = E_data log σ(G(x)) + ν E_noise log σ(-G(x̃)),   G(u) = log p_θ(u) - log q(u) - log ν,

    the logistic-regression log-likelihood of telling data from noise (Gutmann & Hyvärinen 2012); at
    ν = 1 this is the original E log p/(p+q) + E log q/(p+q). With n data and νn noise samples both
    averages weigh each term by 1/n, so V = (1/n) Σ_u log σ(s_u G(u)) over the whole batch, with the label
    s = +1 on data and -1 on noise. log σ keeps it finite for any logit. Data and noise go through the
    network in one pass; `log_q` may pass log q at [x; gen] where it is already known (the training loop
    computes it once an epoch). The accuracy stays a tensor (no host sync)."""
    u = torch.cat([x, gen])
    if log_q is None:
        log_q = noise.log_prob(u)
    logit = energy(u).squeeze(1) - log_q - math.log(nu)
    s_logit = torch.cat([logit[:len(x)], -logit[len(x):]])
    return -F.logsigmoid(s_logit).sum() / len(x), (s_logit > 0).sum() / len(u)


def nce_backward(energy, u, s, log_q, nu):
    """Store the gradient of -V(θ) in each parameter's .grad, bit for bit as value(...)[0].backward() would,
    for a batch u = [x; gen] of n data and νn noise samples with labels s = +1 on data and -1 on noise and
    log q at u. Returns s·G(u), from which step_values gets -V and the accuracy. As d log σ(t)/dt = σ(-t),

        d(-V)/d log p_θ(u) = -s σ(-s G(u)) / n,

    which EBM.log_p_and_backward carries back to the weights (autograd's own kernel for log σ's derivative
    keeps the bits equal)."""
    n = len(u) // (1 + nu)
    log_p, backward = energy.log_p_and_backward(u)
    s_logit = s * (log_p - log_q - math.log(nu))
    _, buffer = torch.ops.aten.log_sigmoid_forward(s_logit)
    backward(s * torch.ops.aten.log_sigmoid_backward(torch.full_like(s_logit, -1 / n), s_logit, buffer))
    return s_logit


def step_values(logits, nu):
    """-V(θ) and the accuracy of each step, as value() computes them, from the s·G(u) of each step's batch
    (a list of 1-D tensors): for a whole epoch at once, rather than a few small ops in every step."""
    s_logit = torch.nn.utils.rnn.pad_sequence(logits, batch_first=True)    # (steps, longest); a last, short batch is padded
    sizes = torch.tensor([len(l) for l in logits], device=s_logit.device)
    real = torch.arange(s_logit.shape[1], device=s_logit.device) < sizes[:, None]
    return (-(F.logsigmoid(s_logit) * real).sum(1) * (1 + nu) / sizes,
            ((s_logit > 0) & real).sum(1) / sizes)
