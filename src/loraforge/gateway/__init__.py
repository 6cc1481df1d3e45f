"""OpenAI-compatible logging gateway: proxies completions to any upstream and records every call.

Conventions (see `loraforge gateway --help`):
- `--upstream-url` is the upstream's OpenAI base URL including its version prefix (https://api.openai.com/v1,
  http://host:port/v1 for `loraforge serve`); clients point their `base_url` at http://gateway:port/v1.
- The task comes from header `X-Loraforge-Task`, else `metadata.task`; the other `metadata` keys become tags.
  `metadata` is always removed before forwarding: OpenAI rejects it unless `store` is set, other servers vary.
- Streams: the gateway asks the upstream for the usage chunk (to log tokens) and drops that chunk unless the
  client asked for it too.
- Keys: with `--api-key`, clients must send it as their Bearer token; the upstream gets the key named by
  `--upstream-api-key-env`. With neither, the client's own Authorization header is passed to the upstream.
  Without `--api-key` the CLI listens on loopback only, unless `--insecure-no-api-key`.
- Limits (body bytes, JSON depth, task label count, record timeout) are named in `gateway.settings`.

Durability: `loraforge.gateway.proxy` (what is recorded before what is sent), `loraforge.store.recorder`.
"""

from loraforge.gateway.app import create_app
from loraforge.gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app"]
