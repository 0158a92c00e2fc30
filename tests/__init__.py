"""Fleetcast test suite."""
