"""The device conformance kit: one suite every device implementation must pass (docs/conformance.md).

Each scenario (``conformance/test_*.py``) runs against a real ``edgeship server``, through a
recording, fault-injecting proxy, on a device the implementation's driver keeps in a state
directory; it judges only what the server stored and what crossed the wire. Run it with
``make conformance`` or ``.venv/bin/python -m pytest conformance`` (``--implementations``,
``--driver NAME=COMMAND`` for another implementation).
"""
