"""Is this text a command for the bot? One pure classifier, used by intake and by the commands.

``@agent-relay status`` is a command; ``@agent-relay status of the build?`` or ``@agent-relay please
rerun the tests`` in a linked thread is a message for the agent and is relayed like any other. A
command word counts only when followed by what that command takes: nothing, (``link``) at most a
provider and a session, or (``mirror``) one of its modes.
"""

from __future__ import annotations

from bot.commands import COMMANDS, MIRROR_MODES
from bot.mrkdwn import strip_leading_mention

MAX_LINK_WORDS = 3  # link <provider> <session>


def command_text(text: str, bot_user_id: str) -> str | None:
    """The command after a leading mention of the bot, or None when ``text`` is not a command."""
    rest = strip_leading_mention(text, bot_user_id)
    if rest is None:
        return None
    words = rest.split()
    if not words:
        return rest
    first = words[0].lower()
    if first == "link":
        return rest if len(words) <= MAX_LINK_WORDS else None
    if first == "mirror" and len(words) == 2:
        return rest if words[1].lower() in MIRROR_MODES else None
    return rest if first in COMMANDS and len(words) == 1 else None
