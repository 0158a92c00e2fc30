"""The operator REST API and the device data plane over HTTP (aiohttp)."""
