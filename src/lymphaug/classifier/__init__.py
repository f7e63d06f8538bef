"""The classifier of the study: model, in-memory data, training loop, evaluation, logging.

``lymphaug.train`` is the DVC stage; this package holds the pure, testable parts.
"""
