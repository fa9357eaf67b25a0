"""agent-relay: steer AI coding-agent sessions from Slack threads."""

__version__ = "0.1.0"
