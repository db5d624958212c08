"""Random Soft Prompts: inject freshly sampled random embeddings into a causal LM's prompt."""

__version__ = "0.1.0"
