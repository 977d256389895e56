"""core: the pure engine. The API models, quantities, Go's GOMEMLIMIT rules, selectors and
globs, the engine, the policy view, the pod records and the policy status computation.

Rule: no I/O, no kopf, no Kubernetes client, no web or metrics server; imports only the
standard library, pydantic and other core modules. (tests/unit/test_wings.py checks it.)
"""
