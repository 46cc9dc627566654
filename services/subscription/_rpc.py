"""SubscriptionService over Connect/gRPC.

Served from the start so the whole contract is visible (reflection, clients); every RPC not
overridden here answers UNIMPLEMENTED through the generated protocol's defaults.
"""

from __future__ import annotations

from ironflow.v1.subscriptions_connect import SubscriptionService


class SubscriptionServiceRpc(SubscriptionService):
    pass
