# The helm test: call the webhook through its Service as the API server does (TLS verified
# against the CA, the Service's DNS name checked) with a Pod CREATE AdmissionReview, and
# check the answer. Standard library only; runs with the operator image's python3.
import json
import ssl
import sys
import urllib.request
import uuid

host, port, path, ca_file = sys.argv[1:5]
uid = str(uuid.uuid4())
review = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "namespace": "gomemlimit-helm-test",
        "dryRun": True,
        "userInfo": {"username": "helm-test"},
        "object": {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "helm-test", "namespace": "gomemlimit-helm-test"},
            "spec": {"containers": [{"name": "app", "image": "app"}]},
        },
    },
}
context = ssl.create_default_context(cafile=ca_file)
request = urllib.request.Request(
    f"https://{host}:{port}{path}",
    data=json.dumps(review).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
)
with urllib.request.urlopen(request, context=context, timeout=10) as answer:
    body = json.load(answer)
response = body.get("response") or {}
if body.get("kind") != "AdmissionReview" or response.get("uid") != uid:
    sys.exit(f"not an answer to our review: {body}")
if response.get("allowed") is not True:
    sys.exit(f"the webhook denied the pod: {response}")
print(f"ok: https://{host}:{port}{path} answered review {uid}: allowed")
