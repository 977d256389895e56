"""cli: the offline CLI (``gomemlimit audit|mutate``) and the manifest reader.

Rule: imports core only (and PyYAML). ``gomemlimit operator`` hands its arguments to
``gomemlimit_operator.runtime.app`` by module name at run time, so the CLI itself never
imports the runtime. (tests/unit/test_wings.py checks it.)
"""
