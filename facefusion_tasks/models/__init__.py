"""Model files: the registry of real models, downloads with digests, stand-ins for tests."""
