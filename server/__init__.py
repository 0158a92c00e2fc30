"""Fleetcast server."""
