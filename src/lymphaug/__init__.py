"""lymphaug: does generative augmentation help a small-data histology classifier?"""

__version__ = "0.1.0"
