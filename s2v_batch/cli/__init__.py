"""The ``s2v`` command."""
