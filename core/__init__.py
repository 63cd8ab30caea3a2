"""What the web process and the worker share.

- `core.songs`: a song's life — submit, cancel, finish, fail, delete — and the only code that
  builds ledger refs or moves credits for songs;
- `core.catalogue`: the studio operations, stem names and storage keys;
- `core.errors`: the one error type a person or an API client sees;
- `core.queue`, `core.dispatch`, `core.reconcile`: the hand-off to the workers over Redis;
- `core.storage`, `core.logs`, `core.metrics`, `core.weights`: infrastructure.

Nothing here imports `app` or `jobs`, Flask or torch (import-linter holds it: docs/architecture.md).
"""
