"""Command-line tools for operators and agent authors."""
