"""Tests against real PostgreSQL clusters, gRPC/HTTP channels, processes, Docker."""
