"""Alembic migrations of the rollout server's schema (env.py, versions/).

The server brings its database to the newest revision at start (:func:`rollout_server.db.init_db`).
By hand, with the same URL the server would use (``EDGESHIP_DATABASE_URL`` or the SQLite file in
``EDGESHIP_DATA_DIR``)::

    python -m rollout_server.migrations current
    python -m rollout_server.migrations upgrade head
    python -m rollout_server.migrations revision --autogenerate -m "add a column"
"""
