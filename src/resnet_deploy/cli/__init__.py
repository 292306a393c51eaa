"""A thin CLI over the library: each subcommand is one module with ``add_parser`` and ``run``."""
