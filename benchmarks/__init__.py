"""Speed benchmarks: `python -m benchmarks NAME` runs benchmarks/NAME.py; each measures ours against a baseline side
by side in the same run and ends with the line `NAME ratio=X.XX`."""
