"""jaxbigram: the character-level bigram language model of "let's build GPT", in functional JAX/Flax."""

__version__ = "0.1.0"
