"""The worker's side: the job pipeline, the engines, the studio operations (worker only).

The web process never imports this package (an import-linter contract holds it); it enqueues
jobs by dotted path (`core.queue.GENERATE_JOB`). Nothing here may import torch at module level:
the engines load their heavy libraries only when they are built.
"""
