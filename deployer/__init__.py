"""flex's core: inventory, job specs, scheduling, reconciliation, transport and state. No UI here."""

__version__ = "0.1.0"
