"""What every stage shares: typed params, errors, the repository layout, the CSV contracts
between stages, image reading and writing, atomic files, and MLflow tracking.

Nothing here imports torch or diffusers; every stage module and package may import it,
and it imports nothing from them.
"""
