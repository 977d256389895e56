"""The local cluster library: ``tests.cluster.controlplane``, ``.realnode``, ``.images``,
``.proof`` and ``.goworkload`` (see README.md here). Run the CLI from the repository root:
``python -m tests.cluster.controlplane up --dir .cluster``.
"""
