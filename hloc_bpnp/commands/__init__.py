"""CLI subcommands (one module each, see hloc_bpnp/cli.py)."""
