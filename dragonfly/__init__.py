"""dragonfly: P2P file and container-image distribution on Twisted."""
__version__ = "0.1.0"
