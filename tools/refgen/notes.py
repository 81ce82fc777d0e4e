"""Fixed prose recorded in MANIFEST.json."""
NOTES = {}
