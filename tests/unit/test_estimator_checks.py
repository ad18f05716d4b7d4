"""OnlineGaussianMixture passes scikit-learn's own estimator checks, one test per check.

No check is declared an expected failure: the online model's warm-up only
changes what happens before ``fit``, and the checks fit first.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from streamgmm.gmm import OnlineGaussianMixture

ESTIMATORS = [
    OnlineGaussianMixture(random_state=0),
    OnlineGaussianMixture(n_components=2, covariance_type="full", random_state=0),
    OnlineGaussianMixture(n_components=3, covariance_type="spherical", trim=0.1, random_state=0),
]


@parametrize_with_checks(ESTIMATORS)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
