"""The noise distributions q that NCE contrasts the data with."""
import torch

NOISES = ('gaussian', 'fit', 'gmm', 'flow', 'fce')
LEARNED = ('flow', 'fce')      # a normalizing flow, with weights of its own to fit, save and restore
# the fewest training points each noise can be fitted to: a full-rank 2D covariance needs 3, the mixture one per
# component, a flow 2 (it starts from the data's mean and std)
MIN_SAMPLES = dict(gaussian=1, fit=3, gmm=16, flow=2, fce=2)


def make_noise(kind, data, flow_layers=None, flow_hidden=None, flow_broad=0.1, mixture_seed=0):
    """The noise distribution q, on data's device. NCE needs q > 0 wherever the data has mass, its log
    density in closed form, and cheap samples. The fixed choices are torch.distributions objects; flow and fce
    are a normalizing flow mixed with N(0, 4I) (flow.FlowNoise), returned as a fresh flow: train.py fits it.
    gmm's k-means start draws from numpy with mixture_seed (train.py passes its seed's 'mixture' stream); a flow's
    weights come from torch's global RNG (train.py's 'init' stream)."""
    import torch.distributions as D
    # validate_args=False: validation would check every log_prob's input with a host sync, once a step
    no_check = dict(validate_args=False)
    device = data.device
    if kind in ('flow', 'fce'):
        from flow import HIDDEN, LAYERS, Flow, FlowNoise
        # a constant coordinate would have std 0; the flow then starts as a narrow Gaussian there
        flow = Flow(data.mean(0), data.std(0).clamp_min(1e-3), flow_layers or LAYERS, flow_hidden or HIDDEN).to(device)
        return FlowNoise(flow, flow_broad)
    if kind == 'gaussian':          # the original N(0, 4I), as a product of two N(0, 2²): closed form, no Cholesky
        return D.Independent(D.Normal(torch.zeros(2, device=device), torch.full((2,), 2.0, device=device), **no_check), 1, **no_check)
    mean, cov = data.mean(0), torch.cov(data.T)
    if kind == 'fit':               # the data's mean and covariance, each std doubled: every data point sits well inside
        return D.MultivariateNormal(mean, 4 * cov, **no_check)
    if kind == 'gmm':
        from sklearn.mixture import GaussianMixture
        gm = GaussianMixture(16, covariance_type='full', random_state=mixture_seed).fit(data.cpu().double().numpy())
        w = torch.as_tensor(gm.weights_, dtype=torch.float32)
        mu = torch.as_tensor(gm.means_, dtype=torch.float32)
        # widen each component (covariance x 2, plus 0.05² I) and mix in 10% of a broad Gaussian over the whole
        # data, so q has heavy enough tails where the data has no mass and the model can be told apart there
        sigma = 2 * torch.as_tensor(gm.covariances_, dtype=torch.float32) + 0.0025 * torch.eye(2)
        w = torch.cat([0.9 * w, torch.tensor([0.1])])
        mu = torch.cat([mu, mean.cpu()[None]])
        sigma = torch.cat([sigma, 4 * cov.cpu()[None]])
        return D.MixtureSameFamily(D.Categorical(probs=w.to(device), **no_check),
                                   D.MultivariateNormal(mu.to(device), sigma.to(device), **no_check), **no_check)
    raise ValueError(f'unknown noise {kind!r}; choose from {", ".join(NOISES)}')
