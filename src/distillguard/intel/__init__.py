"""intel."""
