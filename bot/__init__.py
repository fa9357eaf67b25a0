"""agent-relay: steer AI coding-agent sessions from Slack threads."""

from importlib.metadata import version

# Defined once, in pyproject.toml's [project] version; read from the installed distribution.
__version__ = version("agent-relay")
