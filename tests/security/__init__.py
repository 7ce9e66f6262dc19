"""Hostile tenant data: every case here builds its attack from code and asserts it has no effect."""
