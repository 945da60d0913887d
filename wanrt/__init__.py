"""wanrt: Wan2.x text-to-video inference.

Stages, in the direction a request travels: server -> engine (pipeline -> backend) -> engine files made by
export (and quant). Each stage is a folder at the repository root, imported as ``wanrt.<stage>``.
"""

__version__ = "0.1.0"
