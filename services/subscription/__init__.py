"""The subscription service: live fan-out, consumer groups, acks, topic statistics, WebSocket."""

from ._engine import GroupInfo, SubscriptionEngine, SubscriptionSettings, group_config
from ._messages import AckMode, Delivery, Settle, SubscribeSpec
from ._rpc import SubscriptionServiceRpc
from ._subscription import Subscription
from ._ws import WebSocketApp

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
    "WebSocketApp",
    "group_config",
]
