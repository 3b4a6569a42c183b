"""The `fraudstream` command and the supervisor that runs the whole stack."""

__version__ = "0.1.0"
