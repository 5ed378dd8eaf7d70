"""diffmm: multi-modal recommendation with DiffMM (Jiang et al., ACM MM 2024)."""

from diffmm.errors import ConfigError, DataError, DiffMMError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "DiffMMError", "__version__"]
