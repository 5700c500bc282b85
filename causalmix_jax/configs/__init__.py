"""Configuration sections and the base `get_config` entry point."""
