"""``python -m slimify`` runs the CLI."""
from slimify.cli.app import main

main()
