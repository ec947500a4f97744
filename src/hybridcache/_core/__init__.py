"""The caching algorithm: read path, fill path, write path, and the state they share."""
