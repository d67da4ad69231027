"""Command-line entry points: argument parsing and one library call each."""
