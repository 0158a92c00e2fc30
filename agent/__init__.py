"""Fleetcast agent."""
