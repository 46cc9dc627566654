"""The subscription service: live fan-out, consumer groups, acks, topic statistics, WebSocket."""

from ._engine import GroupInfo, SubscriptionEngine, SubscriptionSettings, group_config
from ._messages import AckMode, Delivery, Settle, SubscribeSpec
from ._rpc import SubscriptionServiceRpc
from ._subscription import Subscription

__all__ = [
    "AckMode",
    "Delivery",
    "GroupInfo",
    "Settle",
    "SubscribeSpec",
    "Subscription",
    "SubscriptionEngine",
    "SubscriptionServiceRpc",
    "SubscriptionSettings",
    "group_config",
]
