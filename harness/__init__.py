"""Development support, not shipped: local clusters for the tests and the
benchmark, probes of their processes, and in-process model backends."""
