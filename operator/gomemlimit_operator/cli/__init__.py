"""cli: the offline CLI (``gomemlimit audit|mutate``), the manifest reader, the live
audit (``audit --cluster``) and ``explain``.

Rule: imports core only (and PyYAML; the Kubernetes client in ``cluster`` and ``explain``
only, inside the functions that read a cluster, so the offline commands never load it).
``gomemlimit operator`` hands its arguments to ``gomemlimit_operator.runtime.app`` by module
name at run time, so the CLI itself never imports the runtime. (tests/unit/test_wings.py checks it.)
"""
