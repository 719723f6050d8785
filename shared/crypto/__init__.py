"""Encryption at rest: carve chunks sealed with AES-256-GCM under a per-carve data key that
Vault Transit wraps (envelope encryption), and crypto-shredding by destroying the Transit key.

    chunks.py   the sealed chunk format (pure): seal, open, what a stored chunk is
    transit.py  the Vault Transit calls, through hvac in threads, signed in as the service
    keys.py     KeyRing: a carve's data key for writing (created once) or reading (unwrapped),
                cached briefly in memory; shredding
    reader.py   CarveReader: the one way every service reads a carve's chunks (decrypting)
    context.py  the KeyRing as an aiohttp cleanup context, its app key and metrics

See docs/security.md, "Encryption at rest", for the key layout, the nonce scheme and the
threat model.
"""
