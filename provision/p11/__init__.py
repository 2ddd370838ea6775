"""The PKCS#11 card backend: tokens behind a PKCS#11 module (a vendor's middleware, SoftHSM2, OpenSC).

``module`` loads each module once per process; ``objects`` is pure (CKA_ID, attribute templates);
``source`` finds tokens and opens them for the runner; ``loader`` is one job's checklist on a token.
The only package that imports ``pkcs11`` (python-pkcs11)."""
