"""Benchmarks: run as modules from the repository root (``python -m bench.upload``).

The commands: ``bench.matrix`` (every axis, with targets and a report), ``bench.upload``,
``bench.download``, ``bench.wrk_blocks``, ``bench.chaos``, ``bench.large_carve``,
``bench.profile``; ``bench.report`` writes a matrix report again from its JSON.

What they share (the backends and service processes themselves come from ``devstack``):
``bench.cli`` (progress, Ctrl-C, options, the JSON record), ``bench.runs`` (a run's frame),
``bench.procstats`` (CPU and memory from /proc), ``bench.ceilings`` (the backends' raw
rates), ``bench.render`` (units, sizes, text tables), ``bench.services`` (the upload path's
backends and processes). A benchmark's scenarios live beside it: ``upload_run`` and
``upload_report`` for ``bench.upload``, ``download_seed``, ``download_clients``,
``download_run`` and ``download_report`` for ``bench.download``, ``matrix_points`` for the
matrix.
"""
