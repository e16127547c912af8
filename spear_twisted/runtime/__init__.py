"""Runtimes: spawning, supervising and stopping instances."""
