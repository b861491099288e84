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
    log q at u. Returns s·G(u), from which step_values gets -V and the accuracy."""
    s_logit, grad_log_p, backward = nce_forward(energy, u, s, log_q, nu)
    backward(grad_log_p)
    return s_logit


def nce_forward(energy, u, s, log_q, nu):
    """s·G(u), d(-V)/d log p_θ(u) and EBM.log_p_and_backward's backward, to be called with it. As
    d log σ(t)/dt = σ(-t),

        d(-V)/d log p_θ(u) = d(-V)/dG(u) = -s σ(-s G(u)) / n,

    which the backward carries to the weights (autograd's own kernel for log σ's derivative keeps the bits equal)."""
    n = len(u) // (1 + nu)
    log_p, backward = energy.log_p_and_backward(u)
    s_logit = s * (log_p - log_q - math.log(nu))
    _, buffer = torch.ops.aten.log_sigmoid_forward(s_logit)
    return s_logit, s * torch.ops.aten.log_sigmoid_backward(torch.full_like(s_logit, -1 / n), s_logit, buffer), backward


def step_values(logits, nu):
    """-V(θ) and the accuracy of each step, as value() computes them, from the s·G(u) of each step's batch
    (a list of 1-D tensors): for a whole epoch at once, rather than a few small ops in every step."""
    s_logit = torch.nn.utils.rnn.pad_sequence(logits, batch_first=True)    # (steps, longest); a last, short batch is padded
    sizes = torch.tensor([len(l) for l in logits], device=s_logit.device)
    real = torch.arange(s_logit.shape[1], device=s_logit.device) < sizes[:, None]
    return (-(F.logsigmoid(s_logit) * real).sum(1) * (1 + nu) / sizes,
            ((s_logit > 0) & real).sum(1) / sizes)


def fce_backward(energy, noise, x, nu, threshold):
    """One step's gradients of Flow Contrastive Estimation (Gao et al. 2020) on a data batch x, with ν fresh draws
    per data point from the current q = noise (flow.FlowNoise). The EBM gets the gradient of -V in .grad, as in
    NCE. Where the classifier tells data from noise with a (balanced) accuracy above threshold, the flow gets the
    gradient of V: it minimises the value the EBM maximises, making its draws harder to tell from the data. V
    depends on φ through log q at every row and, at the flow's draws x̃ = T_φ(z), through log p_θ(x̃) too:

        dV/dφ = Σ_u dV/dG(u) (∂ log p_θ(x̃)/∂x̃ · ∂x̃/∂φ  -  d log q(u)/dφ),   dV/dG = -d(-V)/dG,

    both from (θ, φ) as they were before either step. The branch on the accuracy is the step's one host sync.
    Returns s·G(u), for step_values, and whether the flow has a gradient to step on."""
    u, log_q, flow_backward = noise.contrast_and_backward(x, nu * len(x))
    s = torch.cat([torch.ones(len(x), device=x.device), -torch.ones(len(u) - len(x), device=x.device)])
    s_logit, grad_log_p, backward = nce_forward(energy, u, s, log_q, nu)
    # the accuracy balanced between data and noise, (right on data + right on noise / ν) / 2n: with ν = 1 the plain
    # accuracy of fce-2d; with more noise than data, calling everything noise no longer scores ν / (1 + ν)
    right = s_logit > 0
    flow_turn = bool(nu * right[:len(x)].sum() + right[len(x):].sum() > threshold * 2 * nu * len(x))
    grad_u = backward(grad_log_p, input_grad=flow_turn)    # d(-V)/du through log p_θ, on the flow's turn
    if flow_turn:
        flow_backward(-grad_u, grad_log_p)                  # dV/du; dV/d log q = -dV/dG = d(-V)/dG
    return s_logit, flow_turn
