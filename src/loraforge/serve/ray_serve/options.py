"""How `loraforge serve --ray` sizes its Ray Serve deployments: every default in one place."""

from dataclasses import dataclass

from loraforge.errors import ConfigError

APP_NAME = "loraforge"
REPLICA_HEADER = "x-loraforge-replica"  # which replica answered: adapter affinity is visible from outside
# Requests a replica takes at once before the router looks elsewhere. High, because one engine batches
# them together (continuous batching), and an adapter's requests should stay on the replica that holds it.
MAX_ONGOING_REQUESTS_PER_REPLICA = 64
# Autoscaling: the target of ongoing requests per replica, and how fast to react.
TARGET_ONGOING_REQUESTS = 8
UPSCALE_DELAY_S = 2.0
DOWNSCALE_DELAY_S = 30.0  # an idle replica (down to zero with min 0) goes after this long
# Averaging window of the load the autoscaler reads; longer than the 10 s at which Ray's replicas report it
# (RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S), so that the window always holds a report.
LOOK_BACK_PERIOD_S = 12.0
INGRESS_MAX_ONGOING_REQUESTS = 1024  # the ingress only relays


@dataclass(frozen=True)
class RayServeOptions:
    replicas: int = 1  # fixed replica count, unless `autoscale` is set
    autoscale: tuple[int, int] | None = None  # (min, max) replicas; min 0 = scale to zero
    max_adapters_per_replica: int = 8
    replica_cpus: float = 1.0  # Ray CPUs reserved per replica (fractions share cores)
    downscale_delay_s: float = DOWNSCALE_DELAY_S
    upscale_delay_s: float = UPSCALE_DELAY_S
    target_ongoing_requests: float = TARGET_ONGOING_REQUESTS
    # False: no multiplexing, every request goes to any replica (Ray's default routing), as with one
    # adapter set per replica behind a plain load balancer: the baseline of benchmarks/ray_scaling.py.
    affinity: bool = True

    def deployment_options(self) -> dict:
        """Keyword options of the replica deployment (`Deployment.options`)."""
        options: dict = {
            "max_ongoing_requests": MAX_ONGOING_REQUESTS_PER_REPLICA,
            "ray_actor_options": {"num_cpus": self.replica_cpus},
        }
        if self.autoscale is None:
            options["num_replicas"] = self.replicas
        else:
            low, high = self.autoscale
            options["autoscaling_config"] = {
                "min_replicas": low,
                "max_replicas": high,
                "initial_replicas": max(low, 1),  # ready to answer at start; idle, it scales down
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s,
                "look_back_period_s": LOOK_BACK_PERIOD_S,
            }
        return options


def parse_autoscale(spec: str) -> tuple[int, int]:
    """`MIN,MAX` -> (min, max), 0 <= min <= max, max >= 1."""
    parts = spec.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"--autoscale expects MIN,MAX (two whole numbers), got '{spec}'")
    low, high = (int(p) for p in parts)
    if high < 1 or low > high:
        raise ConfigError(f"--autoscale {spec}: need 0 <= MIN <= MAX and MAX >= 1")
    return low, high
