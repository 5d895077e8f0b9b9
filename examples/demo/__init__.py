"""``edgeship demo``: the whole loop on one machine — convert, publish, a fleet, two gray releases.

Modules:

- :mod:`examples.demo.cli` — the ``demo`` subcommand (registered by :mod:`edgeship.cli`);
- :mod:`examples.demo.run` — orchestration: set-up, the stack, the two rollouts, the summary;
- :mod:`examples.demo.rollouts` — starting a rollout and following it to its end;
- :mod:`examples.demo.fleet` / :mod:`examples.demo.fleet_worker` — real agents in worker processes;
- :mod:`examples.demo.live` — the live view and the summary, computed from the server;
- :mod:`examples.demo.server`, :mod:`examples.demo.prometheus`, :mod:`examples.demo.processes` —
  the child processes.

See ``docs/demo.md``.
"""
