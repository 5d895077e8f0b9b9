"""edgeship: convert, ship and watch ML models on a fleet of devices.

:mod:`edgeship.contract` is what every component agrees on (torch-free, standard library,
numpy and cryptography only); :mod:`edgeship.runtimes` runs a model file on its device
runtime; :mod:`edgeship.cli` is the ``edgeship`` command. Nothing is imported here, so
``import edgeship.contract`` stays light.
"""
