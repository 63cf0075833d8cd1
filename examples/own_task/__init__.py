"""A worked "bring your own task" example for visualprm: see tally.py (the task) and run.py (end to end)."""
