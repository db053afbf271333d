"""The accounts and how one is chosen: the roster (`roster`), usage windows and verdicts (`quota`), the
strategies (`selection`), conversation stickiness (`sticky`), and the pool that puts them together (`pool`)."""
