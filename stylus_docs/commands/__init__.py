"""One module per ``stylus-docs`` subcommand (see :mod:`stylus_docs.cli`)."""
