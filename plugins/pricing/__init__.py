"""Pricing plugins: where the prices of models come from."""
