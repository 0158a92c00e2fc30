"""Fleetcast proto."""
