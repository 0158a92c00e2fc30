"""End-to-end scenarios: the server and agents run as subprocesses."""
