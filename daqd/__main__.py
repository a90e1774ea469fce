"""``python -m daqd`` runs the command line."""

from daqd.cli import main

main()
