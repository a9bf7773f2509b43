"""petrun's version, in a module of its own so the run manifest and `petrun --version` read it
without importing the package's API."""
__version__ = "0.1.0"
