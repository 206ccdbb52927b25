"""jaxbigram: the character-level language models of "let's build GPT" (the bigram and its GPT), in functional JAX/Flax."""

__version__ = "0.1.0"
