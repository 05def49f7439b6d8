"""``python -m normviz``."""

from normviz.cli import main

main()
