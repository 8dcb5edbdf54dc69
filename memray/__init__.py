"""memray: memorization audits and model fingerprints for generative image models.

He, Zhao, Bai, Hsieh (2024): the C_T statistic of Meehan et al. (2020) computed at every block of a Vision
Transformer; its curve over layers detects copying and identifies the generating architecture.
"""

__version__ = "0.1.0"
#: The distribution's name (``memray`` on PyPI is Bloomberg's unrelated memory profiler).
DISTRIBUTION = "memray-audit"


def version() -> str:
    """The installed ``memray-audit`` distribution's version, else :data:`__version__` (an uninstalled tree)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return __version__
