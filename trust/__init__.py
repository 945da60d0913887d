"""Trust stage: signatures over artifact and engine folders, verified before anything loads; signed reports.

Cross-cutting, like errors: the CLI and the server call it before they hand a folder to the engine stage, and
nothing in the engine stage imports it. Crypto comes from securesystemslib (DSSE envelopes, ed25519 keys that
work offline) and cryptography; nothing here implements a primitive.
"""
