"""The optimizers: Adam on plain tensors, normalized gradient descent, and the learning-rate schedule."""
import math

import torch

FUSED_ADAM = getattr(torch, '_fused_adam_', None)   # the kernel behind torch.optim.Adam(fused=True)


def adam_init(params):
    """Adam's state for these parameters: step count and first and second moments (plain tensors, so a
    checkpoint holds it without pickled objects)."""
    return dict(step=[torch.zeros((), device=p.device) for p in params],
                m=[torch.zeros_like(p) for p in params], v=[torch.zeros_like(p) for p in params])


def adam_step(params, state, lr, b1, b2, eps=1e-8):
    """One Adam update (Kingma & Ba 2015), the same arithmetic as torch.optim.Adam(fused=True): we call its
    fused kernel directly, which skips the optimizer's per-step Python work and the 1.3 s import of
    torch._dynamo that torch.optim triggers. Where the kernel is missing, the same update in plain ops."""
    grads = [p.grad for p in params]
    torch._foreach_add_(state['step'], 1)
    if FUSED_ADAM is not None:
        FUSED_ADAM(params, grads, state['m'], state['v'], [], state['step'], lr=lr, beta1=b1, beta2=b2,
                   weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
        return
    for p, g, m, v, t in zip(params, grads, state['m'], state['v'], state['step'], strict=True):
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        # p -= lr m̂ / (sqrt(v̂) + eps), with m̂ = m / (1 - b1^t) and v̂ = v / (1 - b2^t)
        p.data.sub_(lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps))


@torch.no_grad()
def ngd_step(params, lr):
    """One step of normalized gradient descent, θ ← θ - lr g/‖g‖ with ‖g‖ the norm of the whole gradient, as eNCE's
    paper (Liu et al. 2022) runs it: every step moves θ by lr, however flat or steep the loss. No state, no host sync."""
    grads = [p.grad for p in params]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).clamp_min(1e-30)
    torch._foreach_add_(params, torch._foreach_div(grads, norm), alpha=-lr)


def lr_schedule(kind, lr, total):
    """The learning rate at each step: constant (the original), or a cosine decay to 0 over `total` steps."""
    if kind == 'cosine':
        return lambda step: lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    return lambda step: lr
