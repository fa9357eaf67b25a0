"""The agent's side in the thread: each bound session is read and what is new is shown.

* :mod:`bot.mirror.markdown`, :mod:`bot.mirror.split`, :mod:`bot.mirror.diff`,
  :mod:`bot.mirror.pace` and :mod:`bot.mirror.plan` are pure: Markdown to mrkdwn, Slack-sized
  parts, what is new since the watermark, how soon to read again, what a read makes the thread show.
* :mod:`bot.mirror.poller` runs them: one loop per process finds watches due for a read, takes the
  session's singleton lease, reads, and stores the new watermark together with the Slack calls it
  causes (queued in the durable Slack queue, never made from the poller).
"""
