"""runtime: the operator process. ``app`` is the composition root; around it the admission
webhook, the pod watcher, the policy reconciler, the status writer, leader election,
health, metrics and certificates, and the ``--dev`` tooling in ``dev``.

Rule: may import core and install, never cli. (tests/unit/test_wings.py checks it.)
"""
