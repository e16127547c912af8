"""Channels: the transports between the spearlet and its instances."""
