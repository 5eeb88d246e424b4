"""inferserver: serve Docker-packaged medical-imaging models over the ablinfer wire contract."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("inferserver")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
