"""The `modlab` command line: a thin dispatcher (main.py) in front of one Hydra app (app.py)."""
