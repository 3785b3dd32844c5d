"""codat-frames: Codat commerce customers into typed pandas DataFrames and parquet.

The client mirrors Codat's own Python SDK (``CodatCommerce``); beyond it, ``read_customers``
fetches every page into ``CustomerFrames``, and ``to_parquet``/``sync_customers`` keep them on disk.
"""

from codat_frames import models, sandbox
from codat_frames._http import BackoffStrategy, RetryConfig
from codat_frames._version import __version__
from codat_frames.commerce import CodatCommerce, CustomersSDK
from codat_frames.frames import CustomerFrames, DataQualityWarning, normalize_customers
from codat_frames.models import CodatError
from codat_frames.paging import DataChangedWarning, read_customers, read_customers_async
from codat_frames.parquet import SyncResult, read_parquet, sync_customers, to_parquet
from codat_frames.portfolio import PortfolioResult, read_portfolio

__all__ = [
    "BackoffStrategy",
    "CodatCommerce",
    "CodatError",
    "CustomerFrames",
    "CustomersSDK",
    "DataChangedWarning",
    "DataQualityWarning",
    "PortfolioResult",
    "RetryConfig",
    "SyncResult",
    "__version__",
    "models",
    "normalize_customers",
    "read_customers",
    "read_customers_async",
    "read_parquet",
    "read_portfolio",
    "sandbox",
    "sync_customers",
    "to_parquet",
]
