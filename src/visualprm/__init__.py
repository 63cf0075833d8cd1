"""visualprm: process reward models for multimodal reasoning (VisualPRM), end to end.

Importing the package is instant and needs no torch: heavy dependencies are imported by the functions that use
them.
"""

__version__ = "0.1.0"


def package_version() -> str:
    """The installed distribution's version (importlib.metadata), else this file's `__version__` (a source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("visualprm")
    except PackageNotFoundError:
        return __version__
