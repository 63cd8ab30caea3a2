"""Gunicorn's settings for the web (read from the working directory by every `gunicorn` the
Procfile, the Dockerfile and docker-compose start; their command lines set the rest).

`post_worker_init`: once a worker has loaded the app, everything alive then (modules, the app
and its routes, configuration) is moved out of the garbage collector's sight with
`gc.freeze()`, so a full collection walks only what requests have made since. Without it a
full collection in a worker walks some 125,000 long-lived objects and holds the request that
triggered it for about 90 ms, which is what a page's p99 was made of (figure 9 of
docs/benchmarks.md); frozen, a full collection takes about 1 ms. Nothing frozen is freed, which
costs nothing here: those objects live as long as the worker."""
import gc


def post_worker_init(worker):
    gc.collect()
    gc.freeze()
