"""vp-hpo: Bayesian-optimisation studies over the CVAE trainer in `model/`."""

__version__ = "0.1.0"
