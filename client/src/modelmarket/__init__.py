"""Modelmarket's Python client: push, version, publish and run PyTorch models.

See ``Client`` and the ``mm`` command line (``modelmarket.cli``)."""

__version__ = "0.1.0"

from modelmarket.client import Client, split_ref  # noqa: E402
from modelmarket.errors import ApiError, ModelmarketError  # noqa: E402
from modelmarket.types import (  # noqa: E402
    AccessRequest,
    Alias,
    CompressionJob,
    Download,
    Entitlement,
    Invoice,
    Listing,
    Model,
    Organisation,
    Prediction,
    PushResult,
    Subscription,
    Upload,
    Usage,
    Version,
)

__all__ = [
    "AccessRequest",
    "Alias",
    "ApiError",
    "Client",
    "CompressionJob",
    "Download",
    "Entitlement",
    "Invoice",
    "Listing",
    "Model",
    "ModelmarketError",
    "Organisation",
    "Prediction",
    "PushResult",
    "Subscription",
    "Upload",
    "Usage",
    "Version",
    "__version__",
    "split_ref",
]
