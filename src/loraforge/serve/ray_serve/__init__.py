"""`loraforge serve --ray`: replicas of the server on Ray Serve, with adapter affinity and autoscaling."""
