"""PIV (NIST SP 800-73-4) with the YubiKey extensions: pure codecs and a session over a transport."""
