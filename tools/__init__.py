"""Build tools run from the repository (`make setup`), never imported by the runtime package."""
