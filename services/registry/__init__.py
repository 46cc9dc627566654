"""The registry service: versioned function definitions (RegistryService)."""

from ._registry import Registry, StoredFunction
from ._rpc import RegistryServiceRpc

__all__ = ["Registry", "RegistryServiceRpc", "StoredFunction"]
