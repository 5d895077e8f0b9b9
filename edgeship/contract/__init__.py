"""The contract shared by converter, device side, server and monitoring (docs/protocol.md).

- :mod:`~edgeship.contract.manifest`: the release manifest and its canonical JSON;
- :mod:`~edgeship.contract.signing`: Ed25519 signing and verification of manifests;
- :mod:`~edgeship.contract.reports`: the device report's error reasons, cohorts and limits;
- :mod:`~edgeship.contract.latency`: the latency histogram reports carry;
- :mod:`~edgeship.contract.fidelity`: how outputs are compared with a reference (golden check);
- :mod:`~edgeship.contract.metrics`: the catalogue of ``edgeship_*`` Prometheus metrics;
- :mod:`~edgeship.contract.errors`: the error base every component raises.

It imports only the standard library, numpy and cryptography (checked by
``tests/test_layers.py``); everything else imports it.
"""
