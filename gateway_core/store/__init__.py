"""Persistent state: organizations, users, API keys, deployments and routing rules (Tortoise ORM)."""
