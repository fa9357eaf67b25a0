"""The relay, in three parts a reader can hold in their head one at a time.

* :mod:`bot.relay.intake`: which Slack messages are relayed; stored before Slack is acknowledged.
* :mod:`bot.relay.delivery`: sending stored messages to the provider, in order, with retries.
* :mod:`bot.relay.feedback`: what the thread is shown (reactions, replies, notices).

:mod:`bot.relay.compose` builds the text a provider receives, at send time.
"""
