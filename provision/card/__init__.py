"""Card transports: PC/SC through pyscard (transport.py) and the same interface in-process (sim)."""
