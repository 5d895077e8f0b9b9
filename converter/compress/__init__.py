"""Compression steps that run on the PyTorch model before export.

* ``fuse`` (:mod:`~converter.compress.fuse`): Conv+BatchNorm folding;
* ``prune:l1-unstructured`` (:mod:`~converter.compress.prune`): magnitude pruning, masks made
  permanent;
* ``prune:channel`` (:mod:`~converter.compress.channels`): structured channel pruning with
  torch-pruning's dependency graph;
* ``distill`` (:mod:`~converter.compress.distill`): knowledge distillation into a student.

Steps are parsed from the recipe by :mod:`~converter.compress.steps` (no torch) and applied by
:class:`~converter.compress.chain.ModelChain`, which caches every prefix of a chain.
"""
