"""Storage and data in and out: URLs, listings, image sources and shards, decoding, feature files, row handles.

Imports only :mod:`memray.config`-level modules; every stage reads and writes through here.
"""
