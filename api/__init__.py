"""REST API and dashboard (FastAPI): jobs, queue, store, cluster routes, Prometheus metrics."""
