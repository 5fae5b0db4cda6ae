"""Drivers: the only code with side effects on the box.

Why this exists: the core (config, desired, plan, apply) is pure; each driver
owns one third-party library and one part of the live system and speaks
``State`` records (``reconciler.records``) in both directions.  The contract
they follow (``Driver`` and its optional abilities) lives in the core, in
``reconciler.driver``, so the core never imports this package; the table of
drivers is ``registry.SPECS``.
"""
