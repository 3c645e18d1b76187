"""Prometheus metrics of one server (its own registry, so several apps in one process never share counts):

- sdcpu_queue_depth: requests waiting for the worker (gauge, read when scraped)
- sdcpu_requests_total{endpoint, status}: every answered request (endpoint: the route's path; `other` for none: an
  unknown path, or a request serve/guard.py refused before routing)
- sdcpu_request_seconds{endpoint}: request latency as the server saw it (histogram)
- sdcpu_images_generated_total: images answered
"""

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)  # tiny-model requests to SD 1.5 batches


class Metrics:
    def __init__(self, queue_depth):
        """QUEUE_DEPTH() -> int, read at each scrape."""
        self.registry = CollectorRegistry()
        Gauge("sdcpu_queue_depth", "Requests waiting for the worker", registry=self.registry).set_function(queue_depth)
        self.requests = Counter("sdcpu_requests", "Answered requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("sdcpu_request_seconds", "Request latency", ["endpoint"], buckets=BUCKETS,
                                 registry=self.registry)
        self.images = Counter("sdcpu_images_generated", "Images answered", registry=self.registry)

    def middleware(self):
        """An HTTP middleware that counts and times every request by its route."""

        async def measure(request, call_next):
            start = time.perf_counter()
            response = await call_next(request)
            route = request.scope.get("route")
            endpoint = route.path if route is not None else "other"
            self.requests.labels(endpoint, str(response.status_code)).inc()
            self.latency.labels(endpoint).observe(time.perf_counter() - start)
            return response

        return measure

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
