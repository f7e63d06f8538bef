"""The study's classical augmentation: the two DCT methods (:mod:`.dct`) and their
contact sheet (:mod:`.sheet`). ``lymphaug.dct`` is the DVC stage over them.
"""
