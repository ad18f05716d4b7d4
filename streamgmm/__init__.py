"""streamgmm: streaming anomaly detection with an online Gaussian mixture model."""

__version__ = "0.1.0"
