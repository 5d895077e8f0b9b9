"""The bare Flask app the server benchmark compares edgeship with.

Two JSON endpoints at the same paths as edgeship's, so the same wrk scripts hit both:

* ``GET /v1/devices/<device_id>/assignment`` answers a small fixed JSON document;
* ``POST /v1/reports`` parses the JSON body and answers the ids it holds.

No database, no authentication: what is left is Flask, JSON and the server. It is served exactly
like ``edgeship server --workers K`` — through :func:`rollout_server.serve.run`, so the worker
processes, threads and other server settings cannot drift apart::

    python -m benchmarks.bare_app --port 8090 --workers 2
"""

from __future__ import annotations

import argparse

from flask import Flask, jsonify, request

READY_PATH = "/readyz"


def create_bare_app() -> Flask:
    """A Flask app with one JSON GET and one JSON POST endpoint (and ``/readyz``)."""
    app = Flask("bare")

    @app.get(READY_PATH)
    def readyz():
        return jsonify(status="ready")

    @app.get("/v1/devices/<device_id>/assignment")
    def assignment(device_id: str):
        return jsonify(device_id=device_id, model=request.args.get("model", ""), version="1",
                       cohort="stable", rollout_id=None)

    @app.post("/v1/reports")
    def reports():
        data = request.get_json(silent=True)
        items = data.get("reports") if isinstance(data, dict) else None
        if not isinstance(items, list):
            return jsonify(error="bad_request", detail="send {\"reports\": [...]}"), 400
        return jsonify(accepted=[item.get("id") for item in items if isinstance(item, dict)], duplicates=[])

    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the bare app with edgeship's own server settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    from rollout_server import serve

    print(f"bare Flask app on http://{args.host}:{args.port} ({args.workers} workers)", flush=True)
    # each worker process makes its own app with the factory, as edgeship's workers do
    serve.run(create_bare_app(), args.host, args.port, args.workers, None,
              factory="benchmarks.bare_app:create_bare_app")


if __name__ == "__main__":
    main()
