"""CLI commands, one module each; registered in :data:`edgekit.cli.COMMANDS`."""
