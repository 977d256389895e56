"""The Python floor: the least an aiohttp webhook can do per AdmissionReview.

``python -m bench.floor_aiohttp --port P --cert F --key F --patch F``

One route for any path. Each POST body is parsed whole with orjson (the JSON library the
operator uses); a Pod CREATE is answered allowed with the static JSON patch from ``--patch``
(its bytes as they are, base64), anything else allowed without a patch, and a body that is
not an AdmissionReview request with 400. No logging, no metrics, no policy: whatever our
webhook costs above this is ours.
"""

from __future__ import annotations

import argparse
import base64
import ssl
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import orjson


def load_patch(path: Path) -> str:
    """The patch file's bytes, checked to be a JSON array of operations, as base64."""
    data = path.read_bytes().strip()
    ops = orjson.loads(data)
    if not isinstance(ops, list) or not all(
        isinstance(op, dict) and isinstance(op.get("op"), str) and isinstance(op.get("path"), str)
        for op in ops
    ):
        raise ValueError(f"{path}: not a JSON array of RFC 6902 operations")
    return base64.b64encode(data).decode("ascii")


def make_app(patch_b64: str) -> aiohttp.web.Application:
    async def handle(request: aiohttp.web.Request) -> aiohttp.web.Response:
        try:
            review: Any = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise aiohttp.web.HTTPBadRequest(reason=f"not JSON: {exc}"[:200]) from None
        admission = review.get("request") if isinstance(review, Mapping) else None
        if not isinstance(admission, Mapping) or not isinstance(admission.get("uid"), str):
            raise aiohttp.web.HTTPBadRequest(reason="not an AdmissionReview request")
        response: dict[str, Any] = {"uid": admission["uid"], "allowed": True}
        resource = admission.get("resource")
        if (
            admission.get("operation") == "CREATE"
            and isinstance(resource, Mapping)
            and resource.get("group") == ""
            and resource.get("resource") == "pods"
            and isinstance(admission.get("object"), Mapping)
        ):
            response["patchType"] = "JSONPatch"
            response["patch"] = patch_b64
        answer = {
            "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
            "kind": "AdmissionReview",
            "response": response,
        }
        return aiohttp.web.Response(body=orjson.dumps(answer), content_type="application/json")

    app = aiohttp.web.Application(client_max_size=3 * 1024 * 1024)
    app.router.add_route("POST", "/{path:.*}", handle)
    return app


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_aiohttp")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--cert", type=Path, required=True, help="PEM serving certificate")
    parser.add_argument("--key", type=Path, required=True, help="PEM private key")
    parser.add_argument("--patch", type=Path, required=True, help="JSON array of operations")
    args = parser.parse_args(argv)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(args.cert), str(args.key))
    app = make_app(load_patch(args.patch))
    print(f"aiohttp floor on https://{args.host}:{args.port}", flush=True)
    aiohttp.web.run_app(
        app, host=args.host, port=args.port, ssl_context=context, access_log=None, print=None
    )


if __name__ == "__main__":
    main(sys.argv[1:])
