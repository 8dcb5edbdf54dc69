"""memray: memorization audits and model fingerprints for generative image models.

He, Zhao, Bai, Hsieh (2024): the C_T statistic of Meehan et al. (2020) computed at every block of a Vision
Transformer; its curve over layers detects copying and identifies the generating architecture.
"""

__version__ = "0.1.0"
