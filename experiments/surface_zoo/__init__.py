"""The surface zoo study: every response-surface method on every synthetic world and on
the real peer sweeps."""
