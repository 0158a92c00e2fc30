"""Test support: real processes on loopback, model builders, bounded waits."""
