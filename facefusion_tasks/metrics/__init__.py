"""Metrics: definitions, multiprocess wiring, the exporter and its collectors, compaction."""

# Deliberately empty: `multiproc.prepare()` must run before prometheus_client is imported, so
# importing this package (which every submodule import does first) must not import it.
