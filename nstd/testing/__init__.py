"""Test and benchmark support: random weights and synthetic media. Not used by the product."""
