"""The three steps wired to Ray Data and Ray Train; each reads the previous step's artifacts."""
