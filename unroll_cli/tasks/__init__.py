"""One module per kind of problem; :mod:`unroll_cli.tasks.base` documents the protocol."""
