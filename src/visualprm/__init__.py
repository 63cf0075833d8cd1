"""visualprm: process reward models for multimodal reasoning (VisualPRM), end to end.

Importing the package is instant and needs no torch: heavy dependencies are imported by the functions that use
them.
"""

__version__ = "0.1.0"
