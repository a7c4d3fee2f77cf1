"""transfer: resumable, integrity-checked file transfer over HTTP."""

__version__ = "0.1.0"
