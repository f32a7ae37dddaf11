"""Shipping a tuned policy: the versioned policy file, its schema and validation
(:mod:`.policy_file`), and its translation to LLM servers' flags (:mod:`.server_flags`)."""
