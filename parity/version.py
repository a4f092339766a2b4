"""The version of parity, in a module of its own so that any module can read it without importing
the package it belongs to."""

__version__ = "0.1.0"
