"""HTTP API blueprints, one module per resource. All bodies are JSON; errors are
``{"error": ..., "detail": ...}`` with a 4xx status (see :mod:`rollout_server.errors`)."""
