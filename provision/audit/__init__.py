"""The tamper-evident audit log: one hash-chained JSON event per line (CA/B Forum BR §5.4).

Each line of ``logs/audit.jsonl`` is one event. Its ``hash`` is SHA-256 over the canonical form of
the record without ``hash`` (sorted keys, compact separators, UTF-8); with a key from the job file's
``audit.key`` it is HMAC-SHA256 instead, and the record says so with ``"mac": "hmac-sha256"``, so
someone who can edit the file cannot recompute the chain. ``prev`` is the hash of the record before
(64 zeros for the first record ever), and ``seq`` counts records across rotated files, which is how
``verify`` tells a deleted line from an inserted or reordered one.

The line is the canonical form with ``hash`` appended as its last member, so a verifier can hash the
bytes as written without parsing and re-serialising them: ``body = line[:-75] + b"}"``. An
independent verifier may equally parse the line, drop ``hash`` and re-serialise it canonically.

Writing: every append happens under a thread lock and an OS file lock, re-reads the tail (another
process may have appended), refuses to continue a chain whose last record does not verify unless an
operator accepts it (and that decision is itself an event), and is flushed and fsynced before it
returns: the action it reports counts as done only after. Nothing here ever writes a Secret.

A key means every record is keyed: ``verify`` given a key fails on any record without a valid MAC,
and a keyed chain is never continued without its key (nor a plain one with a key). Seals (after
every job with ``seal_each_job``, and when asked) can also be appended to an anchor, a witness file
on other storage; ``verify(anchor=…)`` then catches a log cut, emptied or rolled back together with
its journal, and ``verify(held=…)`` does the same for seals an auditor kept. Every record names the
``operator`` (the person) beside the ``os_user`` and ``host``.

Modules (each imports only those above it):

``records``  the record format: canonical encoding, hashing, one line inspected, chain files, anchors
``forward``  syslog forwarding (RFC 5424) and its reachability check
``verify``   the verifier (``verify``, ``VerifyResult``) and the verified reading behind ``show``
``chain``    the writer: ``AuditLog`` (appends, tail checks, rotation, seals, anchors, time-stamps)

Nothing here prints or chooses an exit code; ``provision.cli_audit`` renders results and errors.
"""
