"""``python -m defend.cli`` (what ``torchrun -m defend.cli train ...`` runs): the ``defend``
command."""

from defend.cli import main

main()
