"""A simulated PIV card (YubiKey 5.7-like), for demo, training, tests and peers via vpcd."""
