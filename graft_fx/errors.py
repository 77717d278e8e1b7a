"""The errors graft_fx raises.

Every error names what was wrong and what was expected. They subclass ValueError so that callers
who treat bad input generically keep working, and GraftError so that callers can catch ours alone.
"""


class GraftError(ValueError):
    """Bad input to graft_fx: a fragment, an argument or a call that cannot be served."""


class TraceError(GraftError):
    """A fragment could not be captured as an fx graph."""
