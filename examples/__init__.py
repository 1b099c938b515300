"""Runnable examples built on callvault. Not part of the installed package; tested by the suite."""
