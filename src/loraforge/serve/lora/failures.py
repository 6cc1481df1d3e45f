"""Failed adapter loads, remembered a while so a bad name is not retried on every request, and bounded so a
client cannot make the server remember without end."""

import time
from collections import OrderedDict

from loraforge.serve.limits import ServeLimits
from loraforge.serve.lora.hub import HubBusyError


class FailedLoads(OrderedDict[str, tuple[Exception, float]]):
    """name -> (error, expiry on the monotonic clock), oldest first. The caller holds the manager's lock."""

    def __init__(self, limits: ServeLimits) -> None:
        super().__init__()
        self.limits = limits

    def error(self, name: str) -> Exception | None:
        """The error of a recent failed load of `name`, while it is remembered."""
        entry = self.get(name)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self[name]
            return None
        return entry[0]

    def remember(self, name: str, exc: Exception) -> None:
        # A busy hub is a moment's state, not a property of the adapter: retry it soon.
        ttl = 1.0 if isinstance(exc, HubBusyError) else self.limits.adapter_failure_ttl_s
        self.pop(name, None)
        self[name] = (exc, time.monotonic() + ttl)
        while len(self) > self.limits.max_remembered_failures:
            self.popitem(last=False)
