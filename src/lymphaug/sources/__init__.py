"""Readers for the ingest stage's sources: generated sample, class folders, archives."""
