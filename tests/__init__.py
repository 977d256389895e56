"""The test suite. A package so that the cluster library imports as ``tests.cluster``."""
