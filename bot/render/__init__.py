"""Every user-visible string: outcomes of relayed messages, answers to commands, notices.

* :mod:`bot.render.outcomes`: what a thread shows for each outcome of a relayed message;
* :mod:`bot.render.control`: answers to commands (use-case results in, text out);
* :mod:`bot.render.text`: escaping, quotes and dates shared by both.
"""
