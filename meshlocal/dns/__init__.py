"""Mesh DNS: Cloud Map and Service Connect names over UDP and TCP (see resolver.py, server.py)."""
