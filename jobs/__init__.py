"""Everything the worker runs: the generation job, engines, storage writes.

Nothing here may import torch at module level: the web process imports `jobs.storage` and
`jobs.queue`, and the engines load their heavy libraries only when they are built.
"""
