"""install: everything generated from the types for installing: the CRDs and the policy
reference (``crds``), and the MutatingWebhookConfiguration (``webhook_configuration``).

Rule: imports core only; no kopf, no Kubernetes client. (tests/unit/test_wings.py checks it.)
"""
