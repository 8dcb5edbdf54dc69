"""Subcommands of the memray CLI (one module each: add_parser + run)."""
