"""The ``genlab`` command line: the layer above every stage (see ``genlab.cli.main``).

Nothing in ``genlab``, ``training``, ``export``, ``service`` or ``eval`` imports it (an
import-linter contract in pyproject.toml, checked by the test suite, keeps it so); its only
importers are the console script and ``python -m genlab``.
"""
