"""gomemlimit-operator: safe GOMEMLIMIT for every Go container in a Kubernetes cluster."""

__version__ = "0.1.0"
