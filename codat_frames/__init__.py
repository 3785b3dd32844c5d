"""codat-frames: Codat commerce customers into typed pandas DataFrames and parquet."""

from codat_frames import models
from codat_frames._http import BackoffStrategy, RetryConfig
from codat_frames._version import __version__
from codat_frames.commerce import CodatCommerce, CustomersSDK
from codat_frames.models import CodatError

__all__ = [
    "BackoffStrategy",
    "CodatCommerce",
    "CodatError",
    "CustomersSDK",
    "RetryConfig",
    "__version__",
    "models",
]
