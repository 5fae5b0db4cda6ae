"""Endpoint health probes run by ``lbctl watch``.

Why this exists: an endpoint that stops answering must leave selection without
anyone editing the configuration, and come back when it answers again.  The
package keeps the pure parts (``targets``: what to probe, from the configuration;
``health``: the per-endpoint up/down state machine; ``sctp``: INIT/INIT-ACK
packets) apart from the parts with side effects (``probers``: one asyncio probe
per type; ``runner``: the event loop thread that schedules them inside the box's
network namespace; ``store``: the last known health in the state dir).
"""
