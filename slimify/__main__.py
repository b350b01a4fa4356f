"""``python -m slimify`` runs the CLI."""
from slimify.cli import main

main()
