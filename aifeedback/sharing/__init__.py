"""Sharing outputs the way the ecosystem does: model/dataset cards (cards.py) and hub uploads (hub.py)."""
