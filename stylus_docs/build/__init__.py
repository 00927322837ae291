"""The build's Beam-free parts: its configuration (and the flags generated from it) and its rules.

* :mod:`.config` – :class:`BuildConfig`, the one place a build setting is declared; the CLI flags of
  ``stylus-docs build`` / ``python -m pipelines.build`` are generated from its fields;
* :mod:`.rules` – merging versions (and dropping or keeping what a tombstone deletes), the reuse decision
  against a previous release, the refine cache, the ``--base-models`` check, and manifest assembly
  (counts, publishability, summary), each a plain function tested without Beam;
* :mod:`.inputs` – what the driver reads of a snapshot besides its data chunks (tombstones, the saved
  ``/api/v1/enums``) before the pipeline starts.

The Beam composites that call these rules are in ``pipelines/stages.py``; ``pipelines/build.py`` wires
them together and publishes.
"""
