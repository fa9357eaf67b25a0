"""Benchmarks of agent-relay: what one relayed message costs and how fast the bot relays.

``scripts/bench`` (``python -m bench``) starts, all on 127.0.0.1, a lean fake Slack Web API and a lean
fake Devin provider (each in its own process), then every target in turn: agent-relay as a real
``agent-relay run --mode http`` subprocess (one or more checkouts, ``--bot-cmd``), a naive stateless
Bolt relay (:mod:`bench.naive`) and a bare asyncio client making the same two calls per message (the
ceiling). A load generator links threads and sends signed Slack events; the fake provider records
what it received, so deliveries, duplicates, reorderings and losses are counted, never assumed.

Modules: :mod:`bench.cli` (options, the run), :mod:`bench.scenarios` (what one run of one target
does), :mod:`bench.load` (signed events, pacing), :mod:`bench.tally` (counting what arrived),
:mod:`bench.targets` (starting and stopping what is measured), :mod:`bench.fake_slack`,
:mod:`bench.fake_provider`, :mod:`bench.naive`, :mod:`bench.procstat` (``/proc`` readings) and
:mod:`bench.report` (tables, SVG charts, the Markdown report).
"""
