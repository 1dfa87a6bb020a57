"""``python -m cnorm`` runs the benchmark, as ``python -m cnorm.bench`` does."""

from cnorm.bench import main

main()
