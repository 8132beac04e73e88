"""Offline tokenizers and processors shared by editing models and judges."""
