"""The registry service: versioned function definitions (RegistryService)."""

from ._registry import MAX_LIST_LIMIT, Registry, StoredFunction
from ._rpc import RegistryServiceRpc

__all__ = ["MAX_LIST_LIMIT", "Registry", "RegistryServiceRpc", "StoredFunction"]
