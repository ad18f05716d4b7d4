"""streamgmm: streaming anomaly detection with an online Gaussian mixture model.

The model and the detector are importable without Kafka::

    from streamgmm import OnlineGaussianMixture, Detector

They are loaded on first use, so ``streamgmm --help`` does not import numpy.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["BatchResult", "Detector", "OnlineGaussianMixture", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Detector", "BatchResult"):
        from . import detector

        return getattr(detector, name)
    if name == "OnlineGaussianMixture":
        from .gmm import OnlineGaussianMixture

        return OnlineGaussianMixture
    raise AttributeError(f"module 'streamgmm' has no attribute {name!r}")
