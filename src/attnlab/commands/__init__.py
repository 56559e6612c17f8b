"""Subcommands of the ``attnlab`` CLI, one module each (see :mod:`attnlab.cli`)."""
