"""pymigrate: run Linux containers, checkpoint them with CRIU, restore and migrate them."""

__version__ = "0.1.0"  # the one place; pyproject.toml reads it (tool.setuptools.dynamic)
