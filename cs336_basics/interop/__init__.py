"""Conversion between this project's runs and other libraries' model formats (hf: Hugging Face Llama)."""
