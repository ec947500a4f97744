"""The caching algorithm, as collaborators the cache composes: read path, fill path, coherence, loads, pending."""
