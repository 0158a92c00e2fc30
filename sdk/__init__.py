"""Fleetcast sdk."""
