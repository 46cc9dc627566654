"""The subscription service (SubscriptionService). Its RPCs answer UNIMPLEMENTED until their issue lands."""

from ._rpc import SubscriptionServiceRpc

__all__ = ["SubscriptionServiceRpc"]
